"""The encoder: texts (or their token ids) in, BGE-M3's dense, sparse and ColBERT outputs out, from one
forward pass.

Knows nothing of HTTP or Ray; the Serve replica and the Ray Data actor both wrap this class. A call runs
in stages, each its own module: tokenize (`tokenization`), pack (`packing`), forward (the transformer),
post-process (`heads`). Two wrappers sit around the staged call: `chunking` (windows, then merged) for
`overflow="chunk"`, and `dedup.run_distinct` for repeated texts. Weights load through FlagEmbedding
(`loading`).

    python -m serve_app.core.encoder --model DIR "some text" ["another text" ...]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, cast

import torch

from .chunking import merge_groups
from .cli import config_flag, given
from .config import EncoderConfig, InputType
from .dedup import run_distinct
from .device import dtype_name, resolve_device, resolve_dtype
from .errors import EncoderOutOfMemoryError, TextError
from .heads import OutputHeads, attach_token_strings
from .identity import ModelIdentity
from .inputs import EncodeOptions, Inputs, TokenizedText, are_token_ids
from .loading import load_checkpoint
from .outputs import Embedding
from .packing import PaddedBatch, pack_by_token_budget, pad_batch
from .tokenization import TextTokenizer


class Encoder:
    """A loaded BGE-M3 model that encodes lists of texts (or their token ids) in input order."""

    def __init__(self, config: EncoderConfig | None = None, **overrides):
        self.config = config or EncoderConfig(**overrides)
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        self.device = resolve_device(self.config.device)
        self.dtype = resolve_dtype(self.config.dtype, self.device)
        loaded = load_checkpoint(self.config.model, self.device, self.dtype)
        self.transformer = loaded.transformer
        self._model_config = cast(Any, loaded.transformer.config)  # transformers' PretrainedConfig
        vocab_size = int(self._model_config.vocab_size)
        self.tokenizer = TextTokenizer(loaded.tokenizer, self.config.max_length, vocab_size)
        self.heads = OutputHeads(loaded.sparse_linear, loaded.colbert_linear, self.tokenizer.non_lexical_ids,
                                 vocab_size, self.config.normalize_dense, self.device)
        self.identity = ModelIdentity.of(self.config, loaded.revision, dtype_name(self.dtype))
        # CPU seconds of the threads that ran `forward` while in it (`time.thread_time`; torch's own intra-op
        # threads not counted): on a GPU the host does little of this work, the benchmarks take it out.
        self.forward_cpu_s = 0.0

    @property
    def dim(self) -> int:
        """Width of the dense and ColBERT vectors (1024 for BGE-M3)."""
        return int(self._model_config.hidden_size)

    @property
    def max_length(self) -> int:
        """Tokens per text the model sees, special tokens included."""
        return self.config.max_length

    def on_layer_done(self, callback: Callable[[], None]) -> None:
        """Call `callback()` each time a transformer layer finishes, in every forward pass, on the thread
        running it: progress finer than a forward pass, whose length grows with its batch."""
        for layer in cast(Any, self.transformer).encoder.layer:
            layer.register_forward_hook(lambda *_: callback())

    @property
    def revision(self) -> str:
        """The checkpoint's revision (`ModelIdentity.revision`)."""
        return self.identity.revision

    def describe(self) -> dict:
        """Model, device and batching facts, for logs and `/info`; `identity` is what the vectors depend on."""
        identity = self.identity.model_dump()
        return {
            "model": self.config.model, "revision": self.revision, "dim": self.dim,
            "vocab_size": self.tokenizer.vocab_size, "max_length": self.max_length, "device": str(self.device),
            "dtype": identity["dtype"], "max_forward_tokens": self.config.max_forward_tokens,
            "max_batch_size": self.config.max_batch_size, "min_length_ratio": self.config.min_length_ratio,
            "torch_threads": torch.get_num_threads(), "instructions": identity["instructions"], "identity": identity,
            "fingerprint": self.identity.fingerprint(),
        }

    def instructed(self, inputs: Inputs, input_type: InputType | None) -> list:
        """`inputs` as encoded when sent as `input_type`: texts with the configured instruction before each;
        lists of token ids as they are (the caller tokenized them, instruction or not)."""
        if are_token_ids(inputs):
            return list(inputs)
        return self.config.instructions.apply(cast("list[str]", list(inputs)), input_type)

    def tokenize(self, texts: Inputs, *, truncate: bool = True) -> list[TokenizedText]:
        """Token ids per text, cut to `max_length` (or `InputTooLongError` when `truncate` is false). Lists
        of token ids are taken as they are (checked against the vocabulary, cut by the same rule)."""
        return self.tokenizer.tokenize(texts, truncate=truncate)

    def tokenize_for(self, texts: Inputs,
                     options: EncodeOptions) -> tuple[list[TokenizedText], list[int] | None]:
        """What `encode_tokens` takes for `texts` (or lists of token ids): one item per text, or
        (overflow="chunk") every text's windows in order, with the number of windows per text for
        `merge_windows`."""
        if options.overflow == "chunk":
            groups = self.tokenizer.windows(texts)
            return [w for g in groups for w in g], [len(g) for g in groups]
        return self.tokenizer.tokenize(texts, truncate=options.truncate), None

    def tokenize_many(self, requests: Sequence[tuple[Inputs, EncodeOptions]]
                      ) -> list[tuple[list[TokenizedText], list[int] | None] | TextError]:
        """`tokenize_for(texts, options)` of each request, with one tokenizer call for all the texts not
        chunked; a request whose text fails gets its `TextError` in its place, the others their tokens."""
        out: list[tuple[list[TokenizedText], list[int] | None] | TextError | None] = [None] * len(requests)
        plain = [i for i, (texts, options) in enumerate(requests)
                 if options.overflow != "chunk" and not are_token_ids(texts)]
        groups = self.tokenizer.tokenize_groups([cast("Sequence[str]", requests[i][0]) for i in plain],
                                             [requests[i][1].truncate for i in plain])
        for i, tokens in zip(plain, groups):
            out[i] = tokens if isinstance(tokens, TextError) else (tokens, None)
        for i, (texts, options) in enumerate(requests):
            if out[i] is None:
                try:
                    out[i] = self.tokenize_for(texts, options)
                except TextError as exc:
                    out[i] = exc
        return cast("list[tuple[list[TokenizedText], list[int] | None] | TextError]", out)

    def merge_windows(self, flat: list[Embedding], windows: list[int]) -> list[Embedding]:
        """Each text's outputs from its windows' outputs (consecutive in `flat`; `windows[i]` per text)."""
        return merge_groups(flat, windows, normalize=self.config.normalize_dense)

    def encode(self, inputs: Inputs | Sequence[TokenizedText], options: EncodeOptions | None = None,
               **outputs: Any) -> list[Embedding]:
        """Encode texts, lists of token ids or `tokenize` output into the requested outputs, in input order:
        `options`, or `EncodeOptions(**outputs)` (e.g. `colbert=True`; its defaults otherwise).

        `overflow="chunk"` encodes a text over `max_length` as windows and merges them.
        """
        options = options or EncodeOptions(**outputs)
        if len(inputs) == 0:
            return []
        if isinstance(inputs[0], TokenizedText):
            return self.encode_tokens(list(inputs), options)  # type: ignore[arg-type]
        items, windows = self.tokenize_for(cast(Inputs, inputs), options)
        flat = self.encode_tokens(items, options)
        return flat if windows is None else self.merge_windows(flat, windows)

    def encode_tokens(self, items: list[TokenizedText], options: EncodeOptions) -> list[Embedding]:
        """Pack, forward and post-process tokenized texts, in input order; repeats run once."""
        results = run_distinct(partial(self._run_packed, options=options), items)
        if options.sparse and options.sparse_tokens:
            attach_token_strings(results, self.tokenizer.token_strings(
                i for r in results for i in r.sparse_indices))  # type: ignore[union-attr]
        return results

    def _run_packed(self, items: list[TokenizedText], options: EncodeOptions) -> list[Embedding]:
        results: list[Embedding | None] = [None] * len(items)
        for batch in pack_by_token_budget([t.n_tokens for t in items], self.config.max_forward_tokens,
                                          self.config.max_batch_size, self.config.min_length_ratio):
            for index, result in zip(batch, self._run_splitting_on_oom([items[i] for i in batch], options)):
                results[index] = result
        return results  # type: ignore[return-value]  # every index is in exactly one batch

    def _run_splitting_on_oom(self, items: list[TokenizedText], options: EncodeOptions) -> list[Embedding]:
        """Run one batch; on device out-of-memory (only that) halve it and retry each half."""
        try:
            return self._run_batch(items, options)
        except torch.cuda.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(items) == 1:
                raise EncoderOutOfMemoryError(
                    f"one text of {items[0].n_tokens} tokens does not fit in {self.device} memory") from exc
            half = len(items) // 2
            return (self._run_splitting_on_oom(items[:half], options)
                    + self._run_splitting_on_oom(items[half:], options))

    @torch.inference_mode()
    def _run_batch(self, items: list[TokenizedText], options: EncodeOptions) -> list[Embedding]:
        batch = pad_batch(items, self.tokenizer.pad_id, self.device)
        return self.heads(self.forward(batch), batch, options)

    def forward(self, batch: PaddedBatch) -> torch.Tensor:
        """The forward stage: the transformer's last hidden state, [batch, length, dim]."""
        # A [batch, 1, length] mask, broadcast over the queries by the model: given [batch, length], transformers
        # builds a [batch, 1, length, length] one on every padded batch (~18% of the small model's time on CPU).
        # No mask at all when nothing is padded.
        padded = min(t.n_tokens for t in batch.items) < batch.input_ids.shape[1]
        started = time.thread_time()
        try:
            return self.transformer(input_ids=batch.input_ids, attention_mask=batch.mask[:, None, :].long()
                                    if padded else None, return_dict=True).last_hidden_state
        finally:
            self.forward_cpu_s += time.thread_time() - started


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
        assert out.sparse_values is not None and out.sparse_tokens is not None
        assert out.dense is not None and out.sparse_indices is not None and out.colbert is not None
        top = sorted(zip(out.sparse_values.tolist(), out.sparse_tokens), reverse=True)[:5]
        print(f"{text[:40]!r}: tokens={out.n_tokens} truncated={out.truncated} dense={out.dense.shape} "
              f"sparse={out.sparse_indices.shape} colbert={out.colbert.shape} top_sparse={top}")


if __name__ == "__main__":
    main()
