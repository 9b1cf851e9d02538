"""The encoder core: texts in, BGE-M3's dense, sparse and ColBERT outputs out, from one forward pass.

Knows nothing of HTTP or Ray; the Serve replica and the Ray Data actor both wrap this class.
Weights load through FlagEmbedding (see `model_loading`); tokenization, token-budget batching and
post-processing are ours, vectorized on the device with one host transfer per output per batch.

    python -m serve_app.core.encoder --model DIR "some text" ["another text" ...]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from .chunking import merge_groups, split_windows
from .cli import config_flag, given
from .config import EncoderConfig
from .device import dtype_name, resolve_device, resolve_dtype
from .errors import (
    EncoderOutOfMemoryError,
    InputTooLongError,
    InvalidTextError,
    InvalidTokenIdError,
)
from .loading import load_checkpoint
from .outputs import Embedding, TokenizedText
from .packing import pack_by_token_budget


def _invalid_text(texts: Sequence[str]) -> Exception:
    """Name the text the tokenizer refused (only valid Unicode crosses into the Rust tokenizer)."""
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            return InvalidTextError(index, f"is a {type(text).__name__}, not a string")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return InvalidTextError(index, "contains an unpaired UTF-16 surrogate (not valid Unicode)")
    return RuntimeError("the tokenizer failed on valid texts")


class Encoder:
    """A loaded BGE-M3 model that encodes lists of texts (or their token ids) in input order."""

    def __init__(self, config: EncoderConfig | None = None, **overrides):
        self.config = config or EncoderConfig(**overrides)
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        self.device = resolve_device(self.config.device)
        self.dtype = resolve_dtype(self.config.dtype, self.device)
        loaded = load_checkpoint(self.config.model, self.device, self.dtype)
        self.transformer, self.colbert_linear, self.sparse_linear = (
            loaded.transformer, loaded.colbert_linear, loaded.sparse_linear)
        self.tokenizer = loaded.tokenizer
        self.revision = loaded.revision
        # A private copy of the Rust tokenizer (batch-encodes in parallel): calling the HF tokenizer
        # mutates its backend's truncation state, which must never leak into ours.
        self._backend = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()
        self._eos_id = self.tokenizer.eos_token_id
        self._pad_id = self.tokenizer.pad_token_id
        self._vocab_size = int(self.transformer.config.vocab_size)
        # Same set upstream leaves out of the lexical weights.
        unused = {self.tokenizer.cls_token_id, self._eos_id, self._pad_id, self.tokenizer.unk_token_id}
        self._unused_ids = torch.tensor(sorted(i for i in unused if i is not None), device=self.device)

    @property
    def dim(self) -> int:
        """Width of the dense and ColBERT vectors (1024 for BGE-M3)."""
        return int(self.transformer.config.hidden_size)

    @property
    def max_length(self) -> int:
        """Tokens per text the model sees, special tokens included."""
        return self.config.max_length

    def describe(self) -> dict:
        """Model, device and batching facts, for logs and `/info`."""
        return {
            "model": self.config.model, "revision": self.revision, "dim": self.dim, "vocab_size": self._vocab_size,
            "max_length": self.max_length, "device": str(self.device), "dtype": dtype_name(self.dtype),
            "max_forward_tokens": self.config.max_forward_tokens, "max_batch_size": self.config.max_batch_size,
            "min_length_ratio": self.config.min_length_ratio,
            "torch_threads": torch.get_num_threads(),
        }

    def _encodings(self, texts: Sequence[str], add_special_tokens: bool = True) -> list:
        try:
            return self._backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        except Exception:
            raise _invalid_text(texts) from None

    def tokenize(self, texts: Sequence[str], *, truncate: bool = True) -> list[TokenizedText]:
        """Tokenize with the model's tokenizer; cut to `max_length` (or raise when `truncate` is false)."""
        encodings = self._encodings(texts)
        out = []
        for index, encoding in enumerate(encodings):
            ids = encoding.ids
            if len(ids) > self.max_length:
                if not truncate:
                    raise InputTooLongError(index, len(ids), self.max_length)
                # Same result as the HF tokenizer's truncation=True: keep the head, end with </s>.
                out.append(TokenizedText(ids[: self.max_length - 1] + [self._eos_id], len(ids)))
            else:
                out.append(TokenizedText(ids, len(ids)))
        return out

    def tokenize_windows(self, texts: Sequence[str]) -> list[list[TokenizedText]]:
        """Each text as windows of at most `max_length` tokens, for `overflow="chunk"` (see `chunking`)."""
        return [split_windows(e.ids, self.max_length) for e in self._encodings(texts)]

    def merge_windows(self, flat: list[Embedding], windows: list[int]) -> list[Embedding]:
        """Each text's outputs from its windows' outputs (consecutive in `flat`; `windows[i]` per text)."""
        return merge_groups(flat, windows, normalize=self.config.normalize_dense)

    def token_details(self, texts: Sequence[str], *, add_special_tokens: bool = True) -> list[list[dict]]:
        """Per text, each token's id, string, whether it is special, and its character span (TEI's /tokenize)."""
        special = set(self.tokenizer.all_special_ids)
        out = []
        for encoding in self._encodings(texts, add_special_tokens):
            out.append([{"id": i, "text": token, "special": i in special,
                         "start": None if i in special else start, "stop": None if i in special else stop}
                        for i, token, (start, stop) in zip(encoding.ids, encoding.tokens, encoding.offsets)])
        return out

    def decode(self, ids: Sequence[Sequence[int]], *, skip_special_tokens: bool = True) -> list[str]:
        """Token ids back to text, one string per id list."""
        for row, seq in enumerate(ids):
            for col, token_id in enumerate(seq):
                if not 0 <= token_id < self._vocab_size:
                    raise InvalidTokenIdError(row, col, token_id, self._vocab_size)
        return self._backend.decode_batch([list(seq) for seq in ids], skip_special_tokens=skip_special_tokens)

    def encode(
        self,
        inputs: Sequence[str] | Sequence[TokenizedText],
        *,
        dense: bool = True,
        sparse: bool = True,
        colbert: bool = False,
        sparse_tokens: bool = False,
        truncate: bool = True,
        overflow: str = "truncate",
    ) -> list[Embedding]:
        """Encode texts (or `tokenize` output) into the requested outputs, in input order.

        `overflow="chunk"` encodes a text over `max_length` as windows and merges them (texts only).
        """
        if not (dense or sparse or colbert):
            raise ValueError("ask for at least one of dense, sparse, colbert")
        if len(inputs) == 0:
            return []
        if overflow == "chunk" and not isinstance(inputs[0], TokenizedText):
            groups = self.tokenize_windows(inputs)  # type: ignore[arg-type]
            flat = self.encode([w for g in groups for w in g], dense=dense, sparse=sparse, colbert=colbert,
                               sparse_tokens=sparse_tokens)
            return self.merge_windows(flat, [len(g) for g in groups])
        tokenized = (list(inputs) if isinstance(inputs[0], TokenizedText)
                     else self.tokenize(inputs, truncate=truncate))  # type: ignore[arg-type]
        # Identical token sequences (repeated texts, in one request or across coalesced requests) run once;
        # each copy gets its own Embedding object sharing the arrays.
        first: dict[tuple, int] = {}
        slots = [first.setdefault((tuple(t.ids), t.truncated), len(first)) for t in tokenized]
        if len(first) < len(tokenized):
            distinct: list = [None] * len(first)
            for item, slot in zip(tokenized, slots):
                distinct[slot] = distinct[slot] or item
            unique = self.encode(distinct, dense=dense, sparse=sparse, colbert=colbert, sparse_tokens=sparse_tokens)
            return [replace(unique[slot]) for slot in slots]
        results: list[Embedding | None] = [None] * len(tokenized)
        lengths = [t.n_tokens for t in tokenized]
        for batch in pack_by_token_budget(lengths, self.config.max_forward_tokens, self.config.max_batch_size,
                                          self.config.min_length_ratio):
            for index, result in zip(batch, self._encode_splitting_on_oom(
                    [tokenized[i] for i in batch], dense, sparse, colbert)):
                results[index] = result
        if sparse and sparse_tokens:
            self._attach_token_strings(results)  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    def _encode_splitting_on_oom(self, items: list[TokenizedText], dense: bool, sparse: bool,
                                 colbert: bool) -> list[Embedding]:
        """Run one batch; on device out-of-memory (only that) halve it and retry each half."""
        try:
            return self._run_batch(items, dense, sparse, colbert)
        except torch.cuda.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(items) == 1:
                raise EncoderOutOfMemoryError(
                    f"one text of {items[0].n_tokens} tokens does not fit in {self.device} memory") from exc
            half = len(items) // 2
            return (self._encode_splitting_on_oom(items[:half], dense, sparse, colbert)
                    + self._encode_splitting_on_oom(items[half:], dense, sparse, colbert))

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The transformer's last hidden state, [batch, length, dim]."""
        return self.transformer(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state

    @torch.inference_mode()
    def _run_batch(self, items: list[TokenizedText], dense: bool, sparse: bool, colbert: bool) -> list[Embedding]:
        longest = max(t.n_tokens for t in items)
        ids = np.full((len(items), longest), self._pad_id, dtype=np.int64)
        for row, item in enumerate(items):
            ids[row, : item.n_tokens] = item.ids
        input_ids = torch.from_numpy(ids).to(self.device, non_blocking=True)
        # From lengths, not `ids != pad`: a text may contain a literal "<pad>", which upstream attends to.
        lengths = torch.tensor([t.n_tokens for t in items], device=self.device)
        mask = torch.arange(longest, device=self.device) < lengths[:, None]
        hidden = self._forward(input_ids, mask.long())
        results = [Embedding(n_tokens=t.n_tokens, truncated=t.truncated) for t in items]
        if dense:
            vecs = hidden[:, 0].float()
            if self.config.normalize_dense:
                vecs = F.normalize(vecs, dim=-1)
            for result, vec in zip(results, vecs.cpu().numpy()):
                result.dense = vec
        if sparse:
            self._sparse(hidden, input_ids, mask, results)
        if colbert:
            self._colbert(hidden, mask, results)
        return results

    def _sparse(self, hidden, input_ids, mask, results: list[Embedding]) -> None:
        """Max ReLU weight per (text, token id), via one scatter_reduce over unique keys (no vocab tensor)."""
        weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1).float()
        keep = mask & ~torch.isin(input_ids, self._unused_ids) & (weights > 0)
        rows, cols = keep.nonzero(as_tuple=True)
        keys = rows * self._vocab_size + input_ids[rows, cols]
        unique_keys, inverse = torch.unique(keys, return_inverse=True)  # sorted: rows stay contiguous
        values = torch.zeros(unique_keys.numel(), device=weights.device).scatter_reduce(
            0, inverse, weights[rows, cols], reduce="amax", include_self=False)
        counts = torch.bincount(unique_keys // self._vocab_size, minlength=len(results))
        token_ids = (unique_keys % self._vocab_size).to(torch.int32).cpu().numpy()
        values_np = values.cpu().numpy()
        bounds = np.cumsum(counts.cpu().numpy())[:-1]
        for result, idx, val in zip(results, np.split(token_ids, bounds), np.split(values_np, bounds)):
            result.sparse_indices, result.sparse_values = idx, val

    def _colbert(self, hidden, mask, results: list[Embedding]) -> None:
        """One normalized vector per token after CLS (upstream keeps </s>), padding dropped in one pass."""
        token_mask = mask[:, 1:]
        vecs = F.normalize(self.colbert_linear(hidden[:, 1:]).float(), dim=-1)[token_mask]
        counts = token_mask.sum(dim=1).cpu().numpy()
        for result, rows in zip(results, np.split(vecs.cpu().numpy(), np.cumsum(counts)[:-1])):
            result.colbert = rows

    def _attach_token_strings(self, results: list[Embedding]) -> None:
        """Decode each sparse id to its text (as upstream's `convert_id_to_token`), once per unique id."""
        unique = sorted({int(i) for r in results for i in r.sparse_indices})  # type: ignore[union-attr]
        strings = dict(zip(unique, self.tokenizer.batch_decode([[i] for i in unique])))
        for result in results:
            result.sparse_tokens = [strings[int(i)] for i in result.sparse_indices]  # type: ignore[union-attr]


def main(argv: list[str] | None = None) -> None:
    """CLI: encode texts and print the shape of each output."""
    parser = argparse.ArgumentParser(description="Encode texts with BGE-M3 and print output shapes.")
    parser.add_argument("texts", nargs="+")
    fields = {"model": str, "device": str, "dtype": str, "max_length": int}
    for field, kind in fields.items():
        config_flag(parser, EncoderConfig, field, type=kind)
    args = parser.parse_args(argv)
    encoder = Encoder(EncoderConfig(**given(args, fields)))
    print(encoder.describe())
    for text, out in zip(args.texts, encoder.encode(args.texts, colbert=True, sparse_tokens=True)):
        top = sorted(zip(out.sparse_values.tolist(), out.sparse_tokens), reverse=True)[:5]
        print(f"{text[:40]!r}: tokens={out.n_tokens} truncated={out.truncated} dense={out.dense.shape} "
              f"sparse={out.sparse_indices.shape} colbert={out.colbert.shape} top_sparse={top}")


if __name__ == "__main__":
    main()
