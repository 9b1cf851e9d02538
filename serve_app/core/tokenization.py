"""The tokenize stage: texts to token ids with the model's Rust tokenizer, and back.

Cuts a text to `max_length` (as the HF tokenizer's `truncation=True`) or refuses it, splits it into
windows for `overflow="chunk"`, and answers TEI's /tokenize and /decode. Input already tokenized (lists
of token ids, as `/tokenize` returns them: special tokens included) skips the tokenizer: its ids are
checked against the vocabulary, then cut or split by the same rules as a text's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

from tokenizers import Encoding, Tokenizer

from .chunking import split_windows
from .errors import InputTooLongError, InvalidTextError, TextError
from .inputs import Inputs, TokenizedText, are_token_ids, check_token_ids, text_problem


def _invalid_text(texts: Sequence[str]) -> Exception:
    """Name the text the tokenizer refused (only valid Unicode crosses into the Rust tokenizer)."""
    for index, text in enumerate(texts):
        if (problem := text_problem(text)) is not None:
            return InvalidTextError(index, problem)
    return RuntimeError("the tokenizer failed on valid texts")


class TextTokenizer:
    """The checkpoint's tokenizer, cut to `max_length` tokens per text (special tokens included)."""

    def __init__(self, hf_tokenizer, max_length: int, vocab_size: int):
        self.max_length = max_length
        self.vocab_size = vocab_size
        self.eos_id: int = hf_tokenizer.eos_token_id
        self.pad_id: int = hf_tokenizer.pad_token_id
        # Same set upstream leaves out of the lexical weights.
        self.non_lexical_ids = sorted(i for i in {hf_tokenizer.cls_token_id, self.eos_id, self.pad_id,
                                                 hf_tokenizer.unk_token_id} if i is not None)
        self._hf = hf_tokenizer
        # A private copy of the Rust tokenizer (batch-encodes in parallel): calling the HF tokenizer
        # mutates its backend's truncation state, which must never leak into ours.
        self._backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()

    def _encodings(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[Encoding]:
        try:
            return self._backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        except Exception:
            raise _invalid_text(texts) from None

    def tokenize(self, texts: Inputs, *, truncate: bool = True) -> list[TokenizedText]:
        """Token ids per text (or list of ids), cut to `max_length` (or `InputTooLongError` when `truncate`
        is false)."""
        return self._cut(self._ids(texts), truncate)

    def _ids(self, inputs: Inputs) -> list[list[int]]:
        """The token ids of each input: texts through the tokenizer, id lists checked against the vocabulary."""
        if not are_token_ids(inputs):
            return [e.ids for e in self._encodings(cast("Sequence[str]", inputs))]
        ids = [list(seq) for seq in cast("Sequence[Sequence[int]]", inputs)]
        check_token_ids(ids, self.vocab_size)
        return ids

    def tokenize_groups(self, groups: Sequence[Sequence[str]],
                        truncate: Sequence[bool]) -> list[list[TokenizedText] | TextError]:
        """`tokenize(group, truncate=t)` for each group, in one tokenizer call: a call costs far more than a
        short text, and a replica gets many one-text requests at once. A group that fails gets its error
        (texts named by their place in the group); the others are unaffected."""
        parts: list[list[list[int]] | None]
        try:
            encodings = iter(self._encodings([text for group in groups for text in group]))
            parts = [[next(encodings).ids for _ in group] for group in groups]
        except Exception:  # a text the tokenizer refuses: each group alone, so only its own fails
            parts = [None] * len(groups)
        out: list[list[TokenizedText] | TextError] = []
        for group, cut, part in zip(groups, truncate, parts):
            try:
                out.append(self.tokenize(group, truncate=cut) if part is None else self._cut(part, cut))
            except TextError as exc:
                out.append(exc)
        return out

    def _cut(self, inputs: Sequence[list[int]], truncate: bool) -> list[TokenizedText]:
        out = []
        for index, ids in enumerate(inputs):
            if len(ids) > self.max_length:
                if not truncate:
                    raise InputTooLongError(index, len(ids), self.max_length)
                # Same result as the HF tokenizer's truncation=True: keep the head, end with </s>.
                out.append(TokenizedText(ids[: self.max_length - 1] + [self.eos_id], len(ids)))
            else:
                out.append(TokenizedText(ids, len(ids)))
        return out

    def windows(self, texts: Inputs) -> list[list[TokenizedText]]:
        """Each text (or list of ids) as windows of at most `max_length` tokens, for `overflow="chunk"`
        (see `chunking`)."""
        return [split_windows(ids, self.max_length) for ids in self._ids(texts)]

    def details(self, texts: Sequence[str], *, add_special_tokens: bool = True) -> list[list[dict]]:
        """Per text, each token's id, string, whether it is special, and its character span (TEI's /tokenize).
        Special is what the tokenizer added around the text (`<s>`, `</s>`), as transformers' special-tokens
        mask says; an unknown piece (`<unk>`) or a special token's string typed in the text is part of it."""
        return [[{"id": i, "text": token, "special": bool(added), "start": None if added else start,
                  "stop": None if added else stop}
                 for i, token, (start, stop), added in zip(encoding.ids, encoding.tokens, encoding.offsets,
                                                           encoding.special_tokens_mask, strict=True)]
                for encoding in self._encodings(texts, add_special_tokens)]

    def decode(self, ids: Sequence[Sequence[int]], *, skip_special_tokens: bool = True) -> list[str]:
        """Token ids back to text, one string per id list; `InvalidTokenIdError` outside the vocabulary."""
        check_token_ids(ids, self.vocab_size, allow_empty=True)
        return self._backend.decode_batch([list(seq) for seq in ids], skip_special_tokens=skip_special_tokens)

    def token_strings(self, ids: Iterable[int]) -> dict[int, str]:
        """Each id's text, as upstream's `convert_id_to_token` for sparse outputs."""
        unique = sorted({int(i) for i in ids})
        return dict(zip(unique, self._hf.batch_decode([[i] for i in unique])))
