"""The naive baseline: a minimal HTTP server doing one encode call per request, no coalescing.

    python -m bench.naive_server --model DIR --port 8101
"""

from __future__ import annotations

import argparse

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serve_app.core.config import EncoderConfig
from serve_app.core.encoder import Encoder


def create_app(encoder: Encoder) -> Starlette:
    """`POST /v1/embeddings` (dense, float) served by calling the encoder once per request."""

    async def embeddings(request: Request) -> Response:
        body = orjson.loads(await request.body())
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        out = encoder.encode(texts, dense=True, sparse=False)  # on the event loop: one request at a time
        data = [{"object": "embedding", "index": i, "embedding": e.dense} for i, e in enumerate(out)]
        return Response(orjson.dumps({"object": "list", "data": data}, option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json")

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"]), Route("/health", health)])


def main() -> None:
    """Serve the naive baseline."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    encoder = Encoder(EncoderConfig(model=args.model, dtype=args.dtype))
    uvicorn.run(create_app(encoder), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
