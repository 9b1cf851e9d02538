"""A toy retriever deployment that calls the model deployment through a `DeploymentHandle`.

It shows the Python handle API: typed `EncodeRequest` in, `EncodeResult` out, no HTTP. It keeps an
in-memory index of dense and sparse vectors and ranks by BGE-M3's weighted dense+sparse score
(`core.scoring.sparse_dense_score`).
"""

from __future__ import annotations

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from ..core.outputs import Embedding
from ..core.scoring import ScoreWeights, sparse_dense_score
from .config import AppArgs
from .deployments import build_model_deployment
from .schemas import EncodeRequest


class ToyRetriever:
    """Index documents and search them with hybrid dense+sparse scores (undecorated deployment class)."""

    def __init__(self, model: DeploymentHandle, weights: ScoreWeights | None = None):
        self._model = model
        self._weights = weights or ScoreWeights(dense=1.0, sparse=0.3)
        self._docs: list[str] = []
        self._vectors: list[Embedding] = []

    async def _embed(self, texts: list[str]) -> list[Embedding]:
        result = await self._model.encode.remote(EncodeRequest(texts=texts))  # dense and sparse, the defaults
        return result.embeddings

    async def index(self, docs: list[str]) -> int:
        """Embed and add documents; returns the index size."""
        self._vectors.extend(await self._embed(docs))
        self._docs.extend(docs)
        return len(self._docs)

    async def search(self, query: str, k: int = 3) -> list[dict]:
        """The `k` best documents for `query`, best first, with their scores."""
        (q,) = await self._embed([query])
        scored = [(sparse_dense_score(q, d, self._weights), i) for i, d in enumerate(self._vectors)]
        return [{"doc_id": i, "text": self._docs[i], "score": s} for s, i in sorted(scored, reverse=True)[:k]]


def build_retriever_app(args: dict | AppArgs | None = None) -> Application:
    """Model deployment + toy retriever holding a handle to it (no HTTP routes)."""
    return serve.deployment(name="ToyRetriever", ray_actor_options={"num_cpus": 0.25})(ToyRetriever).bind(
        build_model_deployment(AppArgs.parse(args)))
