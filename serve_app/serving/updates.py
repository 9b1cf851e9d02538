"""The items of `EmbeddingModel.encode_stream` (`GroupUpdate`) and how they travel: the results of an item as a
few arrays (`PackedResults`), not as Python objects per text.

Pickling an `EncodeResult` per request (a pydantic model, its `Timings`, an `Embedding` per text and its
arrays, each object a call into cloudpickle's hooks) was the model replica's largest single per-request cost
outside the forward pass once calls carry many requests (docs/benchmarks.md, "What a call costs the model
replica, and what a request costs"). Packed, the replica pickles a handful of arrays per item, and the
caller builds the objects back, on its own side, which scales out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.outputs import Embedding
from .schemas import EncodeResult, Timings

Answer = EncodeResult | BaseException


@dataclass
class GroupUpdate:
    """One item of `EmbeddingModel.encode_stream`: the requests of the call (by index) answered since the
    last item, and the replica answering (`cancel` goes there). The first item comes once every request
    is admitted or refused, before any is computed. Pickled, its results travel packed (`PackedResults`)."""

    replica: str | None  # the replica's unique id; None outside Serve
    answers: list[tuple[int, Answer]]

    def __reduce__(self) -> tuple[Any, tuple]:
        """Pickled as its results packed, its failures as they are, and which of the two each answer was."""
        results = [(i, a) for i, a in self.answers if isinstance(a, EncodeResult)]
        failures = [(i, a) for i, a in self.answers if not isinstance(a, EncodeResult)]
        computed = np.array([isinstance(a, EncodeResult) for _, a in self.answers], dtype=bool)
        return _unpacked, (self.replica, PackedResults.pack(results) if results else None, failures, computed)


def _unpacked(replica: str | None, packed: PackedResults | None, failures: list[tuple[int, BaseException]],
              computed: np.ndarray) -> GroupUpdate:
    """A `GroupUpdate` back from its pickled form, its answers in their order."""
    results, failed = iter(packed.unpack() if packed is not None else ()), iter(failures)
    return GroupUpdate(replica, [next(results) if ok else next(failed) for ok in computed.tolist()])


# Embedding's array fields, and how each is joined: `dense` is one row per text, the others a run of rows
# (or values) per text.
_STACKED, _RUNS = ("dense",), ("sparse_indices", "sparse_values", "colbert")


@dataclass
class _Column:
    """One array field of the texts' `Embedding`s: which texts have it, and their values joined."""

    present: np.ndarray  # bool per text
    lengths: np.ndarray | None  # per text that has it: its rows (None for a stacked field: one row each)
    values: np.ndarray

    @classmethod
    def join(cls, name: str, parts: list[np.ndarray | None]) -> _Column | None:
        got = [p for p in parts if p is not None]
        if not got:
            return None
        present = np.array([p is not None for p in parts], dtype=bool)
        if name in _STACKED:
            return cls(present, None, np.stack(got))
        return cls(present, np.array([len(p) for p in got], dtype=np.int64), np.concatenate(got))

    def split(self) -> list[np.ndarray | None]:
        """Each text's value (a view into `values`), None where it has none."""
        pieces = iter(self.values if self.lengths is None else np.split(self.values, np.cumsum(self.lengths)[:-1]))
        return [next(pieces) if has else None for has in self.present.tolist()]


@dataclass
class PackedResults:
    """Several requests' `EncodeResult`s (each with its index in the call) as arrays: per request its index,
    token counts and timings; per text its token count, truncation and outputs, each output joined over the
    texts (`_Column`)."""

    heads: np.ndarray  # int64 [requests, 5]: index, prompt_tokens, batch_requests, batch_texts, texts
    timings: np.ndarray  # float64 [requests, 3]: tokenization, queue, inference ms
    identities: list[str]  # the distinct `identity` values
    identity_of: np.ndarray  # int per request: its identity's place in `identities`
    texts: np.ndarray  # int64 [texts, 2]: n_tokens, truncated
    columns: dict[str, _Column]
    sparse_tokens: list[list[str] | None] | None  # per text, when any text has them

    @classmethod
    def pack(cls, results: list[tuple[int, EncodeResult]]) -> PackedResults:
        """`results` as arrays."""
        embeddings = [e for _, r in results for e in r.embeddings]
        identities = sorted({r.identity for _, r in results})
        columns = {name: column for name in _STACKED + _RUNS
                   if (column := _Column.join(name, [getattr(e, name) for e in embeddings])) is not None}
        tokens = [e.sparse_tokens for e in embeddings]
        return cls(
            heads=np.array([(i, r.prompt_tokens, r.batch_requests, r.batch_texts, len(r.embeddings))
                            for i, r in results], dtype=np.int64).reshape(-1, 5),
            timings=np.array([(r.timings.tokenization_ms, r.timings.queue_ms, r.timings.inference_ms)
                              for _, r in results], dtype=np.float64).reshape(-1, 3),
            identities=identities,
            identity_of=np.array([identities.index(r.identity) for _, r in results], dtype=np.int64),
            texts=np.array([(e.n_tokens, e.truncated) for e in embeddings], dtype=np.int64).reshape(-1, 2),
            columns=columns,
            sparse_tokens=tokens if any(t is not None for t in tokens) else None)

    def unpack(self) -> list[tuple[int, EncodeResult]]:
        """The `(index, EncodeResult)` pairs packed, in their order (arrays are views into the packed ones)."""
        missing: list[None] = [None] * len(self.texts)
        dense, indices, weights, colbert = (self.columns[name].split() if name in self.columns else missing
                                            for name in _STACKED + _RUNS)
        tokens = self.sparse_tokens or missing
        embeddings = [Embedding(n_tokens=n_tokens, truncated=bool(truncated), dense=dense[j], sparse_indices=indices[j],
                                sparse_values=weights[j], sparse_tokens=tokens[j], colbert=colbert[j])
                      for j, (n_tokens, truncated) in enumerate(self.texts.tolist())]
        out, start = [], 0
        for (index, prompt_tokens, batch_requests, batch_texts, count), (tok, queue, inference), who in zip(
                self.heads.tolist(), self.timings.tolist(), self.identity_of.tolist(), strict=True):
            # model_construct: these values were validated when the replica built them
            out.append((index, EncodeResult.model_construct(
                embeddings=embeddings[start:start + count], prompt_tokens=prompt_tokens,
                timings=Timings.model_construct(tokenization_ms=tok, queue_ms=queue, inference_ms=inference),
                batch_requests=batch_requests, batch_texts=batch_texts, identity=self.identities[who])))
            start += count
        return out


# What `pack` carries; a field added to either class must be carried too (a test compares these with them).
PACKED_RESULT_FIELDS = ("embeddings", "prompt_tokens", "timings", "batch_requests", "batch_texts", "identity")
PACKED_EMBEDDING_FIELDS = ("n_tokens", "truncated", *_STACKED, *_RUNS, "sparse_tokens")
