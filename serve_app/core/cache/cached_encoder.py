"""The encoder behind the embedding cache: inputs already cached skip the model.

The one place a call's inputs are split into cache hits and misses, and the misses' computed embeddings
merged back among the hits in input order (`CacheSplit`): the Serve replica splits before its batch queue
and merges after it, a direct caller (the offline job re-embedding a corpus of which most texts did not
change) gets both in `encode`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..encoder import Encoder
from ..errors import TextError
from ..inputs import EncodeOptions, Inputs
from ..outputs import Embedding
from .store import CacheConfig, EmbeddingCache


@dataclass
class CacheSplit:
    """One call's inputs against the cache: what was found, and which inputs are left to compute."""

    found: list[Embedding | None]  # per input; None where the model must run
    misses: list[int]  # indices of the inputs the cache did not have, in order

    @property
    def complete(self) -> bool:
        """Whether every input was found (nothing to compute)."""
        return not self.misses

    @property
    def hit_tokens(self) -> int:
        """Tokens of the inputs answered from the cache (they count in a request's usage)."""
        return sum(e.n_tokens for e in self.found if e is not None)

    def todo(self, inputs: Inputs) -> list:
        """The inputs to compute: all of `inputs` when none was found, else the misses alone."""
        return list(inputs) if len(self.misses) == len(self.found) else [inputs[i] for i in self.misses]

    def merge(self, computed: list[Embedding]) -> list[Embedding]:
        """Every input's embedding in input order: the hits, with `computed` (one per miss) in the misses' places."""
        merged = list(self.found)
        for index, embedding in zip(self.misses, computed, strict=True):
            merged[index] = embedding
        return merged  # type: ignore[return-value]  # every miss was filled

    def renumbered(self, exc: TextError) -> TextError:
        """An error naming an input of `todo` as the caller's input it stands for."""
        return exc if len(self.misses) == len(self.found) else exc.renumbered(self.misses)


class CachingEncoder:
    """`encoder` plus its cache; without a cache (None, or `backend: off`) every call goes to the encoder."""

    def __init__(self, encoder: Encoder, config: CacheConfig | None):
        self.encoder = encoder
        on = config is not None and config.backend != "off"
        self.cache = EmbeddingCache(config, encoder.identity) if on else None  # type: ignore[arg-type]

    def split(self, inputs: Inputs, options: EncodeOptions) -> CacheSplit:
        """`inputs` looked up in the cache (all misses with the cache off)."""
        found: list[Embedding | None] = ([None] * len(inputs) if self.cache is None
                                         else self.cache.lookup(list(inputs), options.cache_tag))
        return CacheSplit(found, [i for i, hit in enumerate(found) if hit is None])

    def store(self, inputs: Inputs, options: EncodeOptions, embeddings: list[Embedding]) -> None:
        """Remember `embeddings`, which hold exactly the fields `options` asks for. Never raises."""
        if self.cache is not None:
            self.cache.store(list(inputs), options.cache_tag, embeddings)

    def encode(self, inputs: Inputs, options: EncodeOptions) -> list[Embedding]:
        """`Encoder.encode` with cached inputs answered from the cache and the rest stored in it."""
        split = self.split(inputs, options)
        if split.complete:
            return split.merge([])
        todo = split.todo(inputs)
        try:
            computed = self.encoder.encode(todo, options)
        except TextError as exc:
            raise split.renumbered(exc) from None
        self.store(todo, options, computed)
        return split.merge(computed)

    def stats(self) -> dict:
        """The cache's counters, or `{"backend": "off"}`."""
        return self.cache.stats() if self.cache is not None else {"backend": "off"}
