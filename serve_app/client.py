"""A small typed HTTP client of this service; retries 429 and 503 honouring `Retry-After`.

    from serve_app.client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as client:
        vectors = client.embed(["hello", "東京"])                    # float32 [n, dim]
        outputs = client.encode(["hello"], sparse=True, colbert=True)  # list[Embedding]
        scores = client.score("capital of japan", ["東京 is the capital", "rivers"])

Vectors travel as base64 (4x smaller than JSON floats) and come back as numpy arrays. Any other
error status raises `ServiceError` with the server's message and offending field.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import random
import time
from collections.abc import Sequence

import httpx
import numpy as np

from .core.inputs import EncodeOptions, are_token_ids, as_inputs
from .core.outputs import Embedding

RETRY_STATUSES = frozenset({429, 503})


class ServiceError(Exception):
    """An error answer of the service: HTTP status plus its `{"message", "type", "param", "code"}`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.param, self.code = status, message, param, code

    @classmethod
    def from_response(cls, response: httpx.Response) -> ServiceError:
        """Parse the service's JSON error body (or keep the raw text of a proxy's)."""
        try:
            error = response.json()["error"]
            return cls(response.status_code, error["message"], param=error.get("param"), code=error.get("code"))
        except (ValueError, KeyError, TypeError):
            return cls(response.status_code, response.text[:500])


def retry_delay(response: httpx.Response | None, attempt: int, cap: float) -> float:
    """Seconds to wait: at least the server's `Retry-After` (seconds or HTTP date), else exponential
    backoff; plus up to 25% jitter so clients turned away together do not all come back together."""
    base = min(0.25 * 2 ** attempt, cap)
    header = response.headers.get("retry-after") if response is not None else None
    if header:
        try:
            base = min(max(float(header), 0.0), cap)
        except ValueError:
            with contextlib.suppress(TypeError, ValueError):  # an unreadable header: keep the backoff
                base = min(max(email.utils.parsedate_to_datetime(header).timestamp() - time.time(), 0.0), cap)
    return base * (1 + 0.25 * random.random())


class Client:
    """Synchronous client; thread-safe like the `httpx.Client` it wraps."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 4, max_retry_wait_s: float = 30.0, transport: httpx.BaseTransport | None = None):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)
        self.max_retries, self.max_retry_wait_s = max_retries, max_retry_wait_s
        self.retries = 0  # requests re-sent so far (429, 503, connection errors)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _request(self, method: str, path: str, body: dict | None = None):
        for attempt in range(self.max_retries + 1):
            try:
                response = self._http.request(method, path, json=body)
            except httpx.TransportError:  # connection refused/reset: the service may be restarting
                if attempt == self.max_retries:
                    raise
                self.retries += 1
                time.sleep(retry_delay(None, attempt, self.max_retry_wait_s))
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                self.retries += 1
                time.sleep(retry_delay(response, attempt, self.max_retry_wait_s))
                continue
            if response.status_code >= 400:
                raise ServiceError.from_response(response)
            return response.json()
        raise AssertionError("unreachable")

    def embed(self, texts: Sequence[str] | Sequence[Sequence[int]], *, overflow: str = EncodeOptions.overflow,
              input_type: str | None = None) -> np.ndarray:
        """Dense vectors, float32 [len(texts), dim], through the OpenAI-compatible route; `input_type` "query" or
        "passage" (its instruction first). `texts` may be lists of token ids where the service takes them
        there (`args.openai_token_ids`; `encode` always takes ids)."""
        body = self._request("POST", "/v1/embeddings", {"input": as_inputs(texts), "encoding_format": "base64",
                                                         "overflow": overflow, "input_type": input_type})
        return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]])

    def encode(self, texts: Sequence[str] | Sequence[Sequence[int]], *, dense: bool = EncodeOptions.dense,
               sparse: bool = EncodeOptions.sparse, colbert: bool = EncodeOptions.colbert,
               sparse_tokens: bool = EncodeOptions.sparse_tokens, truncate: bool = EncodeOptions.truncate,
               overflow: str = EncodeOptions.overflow, input_type: str | None = None) -> list[Embedding]:
        """Any mix of BGE-M3's outputs, one `Embedding` per text (or list of token ids), in order; the defaults
        are the service's (`EncodeOptions`). With `sparse_tokens`, the sparse weights' token strings come in
        place of their ids (`sparse_indices` is then None), as `/encode` sends them."""
        inputs = as_inputs(texts)
        field = "token_ids" if are_token_ids(inputs) else "texts"
        body = self._request("POST", "/encode", {
            field: inputs, "input_type": input_type, "dense": dense, "sparse": sparse, "colbert": colbert,
            "sparse_tokens": sparse_tokens, "truncate": truncate, "overflow": overflow, "encoding_format": "base64"})
        return [_embedding(item) for item in body["data"]]

    def score(self, query: str, passages: Sequence[str], weights: dict[str, float] | None = None) -> list[dict]:
        """Dense, sparse, ColBERT and hybrid scores of each passage, in order."""
        body = {"query": query, "passages": list(passages), **({"weights": weights} if weights else {})}
        data = self._request("POST", "/score", body)["data"]
        return [{k: v for k, v in item.items() if k != "index"} for item in data]

    def tokenize(self, texts: Sequence[str], *, add_special_tokens: bool = True,
                 input_type: str | None = None) -> list[list[dict]]:
        """Each text's tokens: id, text, special, start, stop; with `input_type` "query" or "passage", of the
        text as encoded on that side (its instruction first)."""
        return self._request("POST", "/tokenize", {"inputs": list(texts), "add_special_tokens": add_special_tokens,
                                                   "prompt_name": input_type})

    def decode(self, ids: Sequence[Sequence[int]], *, skip_special_tokens: bool = True) -> list[str]:
        """Token id lists back to text."""
        body = {"ids": [list(i) for i in ids], "skip_special_tokens": skip_special_tokens}
        return self._request("POST", "/decode", body)

    def info(self) -> dict:
        """Model, limits and batching facts."""
        return self._request("GET", "/info")

    def health(self) -> dict:
        """`/health` as is (no retries): `{"status": "ok" | "degraded", ...}`; raises `ServiceError` on 503."""
        response = self._http.get("/health")
        if response.status_code >= 400:
            raise ServiceError.from_response(response)
        return response.json()


def _embedding(item: dict) -> Embedding:
    embedding = Embedding(n_tokens=item["n_tokens"], truncated=item["truncated"])
    if "dense" in item:
        embedding.dense = np.frombuffer(base64.b64decode(item["dense"]), dtype="<f4")
    if "sparse" in item:
        sparse = item["sparse"]
        embedding.sparse_values = np.asarray(sparse["values"], dtype=np.float32)
        if "tokens" in sparse:
            embedding.sparse_tokens = sparse["tokens"]
        else:
            embedding.sparse_indices = np.asarray(sparse["indices"], dtype=np.int32)
    if "colbert" in item:
        embedding.colbert = np.frombuffer(base64.b64decode(item["colbert"]), dtype="<f4").reshape(item["colbert_shape"])
    return embedding
