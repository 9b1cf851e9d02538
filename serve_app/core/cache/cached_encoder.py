"""The encoder behind the embedding cache: texts already cached skip the model.

Used by the Serve replica (which looks up and stores around its batch queue) and by any caller that
encodes directly, e.g. the offline job re-embedding a corpus of which most texts did not change.
"""

from __future__ import annotations

from ..encoder import Encoder
from ..errors import TextError
from ..outputs import Embedding, EncodeOptions
from ..tokenization import Inputs
from .store import CacheConfig, EmbeddingCache


class CachingEncoder:
    """`encoder` plus its cache; with `backend: off` every call goes to the encoder."""

    def __init__(self, encoder: Encoder, config: CacheConfig):
        self.encoder = encoder
        # Keyed by everything that changes the vectors: weights, dtype, normalization (and max_length).
        identity = "|".join(str(v) for v in (encoder.config.model, encoder.revision, encoder.dtype,
                                             encoder.config.normalize_dense))
        self.cache = None if config.backend == "off" else EmbeddingCache(config, identity, encoder.max_length)

    def lookup(self, texts: Inputs, options: EncodeOptions) -> list[Embedding | None]:
        """Cached embeddings in text order, None where the model must run (all None with the cache off)."""
        if self.cache is None:
            return [None] * len(texts)
        return self.cache.lookup(list(texts), options.cache_tag)

    def store(self, texts: Inputs, options: EncodeOptions, embeddings: list[Embedding]) -> None:
        """Remember `embeddings`, which hold exactly the fields `options` asks for. Never raises."""
        if self.cache is not None:
            self.cache.store(list(texts), options.cache_tag, embeddings)

    def encode(self, texts: Inputs, options: EncodeOptions) -> list[Embedding]:
        """`Encoder.encode` with cached texts answered from the cache and the rest stored in it."""
        found = self.lookup(texts, options)
        misses = [i for i, hit in enumerate(found) if hit is None]
        if misses:
            todo = [texts[i] for i in misses]
            try:
                computed = self.encoder.encode(todo, dense=options.dense, sparse=options.sparse,
                                               colbert=options.colbert, sparse_tokens=options.sparse_tokens,
                                               truncate=options.truncate, overflow=options.overflow)
            except TextError as exc:
                raise exc.renumbered(misses) from None
            self.store(todo, options, computed)
            for index, embedding in zip(misses, computed):
                found[index] = embedding
        return found  # type: ignore[return-value]  # every miss was filled

    def stats(self) -> dict:
        """The cache's counters, or `{"backend": "off"}`."""
        return self.cache.stats() if self.cache is not None else {"backend": "off"}
