"""Offline corpus embedding with Ray Data: the same `Encoder` as the Serve replicas, in an actor pool."""

from .job import OfflineJob, Summary
from .pipeline import embed_corpus

__all__ = ["OfflineJob", "Summary", "embed_corpus"]
