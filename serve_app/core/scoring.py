"""BGE-M3 relevance scores between one query and its passages, as FlagEmbedding's `compute_score`.

dense: dot product of the (normalized) dense vectors; sparse: lexical matching score, the sum of
products of raw weights over shared token ids; colbert: mean over query vectors of their best dot
product with a passage vector; hybrids are the weighted means upstream reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .outputs import Embedding


@dataclass(frozen=True)
class ScoreWeights:
    """Weights of dense, sparse and ColBERT in the hybrid scores (upstream's default is 1, 1, 1)."""

    dense: float = 1.0
    sparse: float = 1.0
    colbert: float = 1.0


def _asked(output: np.ndarray | None, name: str) -> np.ndarray:
    """An output a score needs; both texts must have been encoded with it."""
    if output is None:
        raise ValueError(f"this score needs the {name} output of both texts, and one was encoded without it")
    return output


def dense_score(query: Embedding, passage: Embedding) -> float:
    """Dot product of dense vectors (cosine when normalized)."""
    return float(np.dot(_asked(query.dense, "dense"), _asked(passage.dense, "dense")))


def sparse_score(query: Embedding, passage: Embedding) -> float:
    """Lexical matching score: sum of weight products over the token ids both texts contain."""
    _, qi, pi = np.intersect1d(_asked(query.sparse_indices, "sparse"), _asked(passage.sparse_indices, "sparse"),
                               assume_unique=True, return_indices=True)
    query_values, passage_values = _asked(query.sparse_values, "sparse"), _asked(passage.sparse_values, "sparse")
    return float(np.dot(query_values[qi].astype(np.float64), passage_values[pi]))


def colbert_score(query: Embedding, passage: Embedding) -> float:
    """Late interaction: each query vector's best match among the passage vectors, averaged."""
    return float((_asked(query.colbert, "colbert") @ _asked(passage.colbert, "colbert").T).max(axis=1).mean())


def weighted(scores: dict[str, float], weights: ScoreWeights) -> float:
    """The weighted mean of the scores given (keys among dense, sparse, colbert): upstream's hybrid scores."""
    total = sum(getattr(weights, name) for name in scores)
    return sum(score * getattr(weights, name) for name, score in scores.items()) / total


def sparse_dense_score(query: Embedding, passage: Embedding, weights: ScoreWeights = ScoreWeights()) -> float:
    """The sparse+dense hybrid: dense and sparse scores weighted (both texts need both outputs)."""
    return weighted({"dense": dense_score(query, passage), "sparse": sparse_score(query, passage)}, weights)


def compute_scores(query: Embedding, passage: Embedding, weights: ScoreWeights = ScoreWeights()) -> dict[str, float]:
    """All five scores upstream reports, keyed as upstream keys them."""
    scores = {"dense": dense_score(query, passage), "sparse": sparse_score(query, passage),
              "colbert": colbert_score(query, passage)}
    return {**scores, "sparse+dense": weighted({k: scores[k] for k in ("sparse", "dense")}, weights),
            "colbert+sparse+dense": weighted({k: scores[k] for k in ("colbert", "sparse", "dense")}, weights)}
