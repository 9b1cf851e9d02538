"""Offline corpus embedding with Ray Data: the same `Encoder` as the Serve replicas, in an actor pool."""

from .pipeline import OfflineJob, Summary, embed_corpus

__all__ = ["OfflineJob", "Summary", "embed_corpus"]
