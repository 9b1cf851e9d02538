"""Recorded answers of every route and error path: run on two trees (before and after a refactor) and diff.

    python -m tests.support.answers MODEL_DIR OUT.json     # MODEL_DIR: a small checkpoint (tools.tiny_model)

Starts a local Ray with Serve, deploys the service twice (defaults; API keys from a file), sends a fixed
list of requests and writes, per request, the status, the headers a client reads and the body with floats
rounded (1e-5), facts that vary run to run (pids, timings, counters) removed. Two files that differ show
what a change changed for users. Use the same MODEL_DIR for both runs: its path is part of `/info`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

KEY = "recorded-key"
LONG = "rivers and mountains near the old library " * 30  # past max_length 64
HEADERS = ("content-type", "retry-after", "www-authenticate", "x-compute-tokens")
VARYING = {"pid", "node_id", "counts", "compute", "cache", "torch_threads", "x-batch-requests"}


def requests() -> list[tuple[str, str, str, Any]]:
    """(name, method, path, JSON body or raw bytes) for every route and error path."""
    ids = [0, 100, 200, 2]
    cases: list[tuple[str, str, str, Any]] = [
        ("health", "GET", "/health", None), ("info", "GET", "/info", None), ("models", "GET", "/v1/models", None),
        ("no route", "GET", "/nowhere", None), ("wrong method", "GET", "/encode", None),
        ("openai text", "POST", "/v1/embeddings", {"input": "hello world", "model": "bge-m3"}),
        ("openai texts", "POST", "/v1/embeddings", {"input": ["a", "b c", "東京"]}),
        ("openai base64", "POST", "/v1/embeddings", {"input": ["a"], "encoding_format": "base64"}),
        ("openai dimensions ok", "POST", "/v1/embeddings", {"input": "a", "dimensions": 64}),
        ("openai dimensions bad", "POST", "/v1/embeddings", {"input": "a", "dimensions": 12}),
        ("openai chunk", "POST", "/v1/embeddings", {"input": LONG, "overflow": "chunk"}),
        ("openai query", "POST", "/v1/embeddings", {"input": "a", "input_type": "query"}),
        ("openai bad input_type", "POST", "/v1/embeddings", {"input": "a", "input_type": "doc"}),
        ("openai empty", "POST", "/v1/embeddings", {"input": []}),
        ("openai too many", "POST", "/v1/embeddings", {"input": ["a"] * 9}),
        ("openai null item", "POST", "/v1/embeddings", {"input": ["a", None]}),
        ("openai ids", "POST", "/v1/embeddings", {"input": [ids]}),
        ("openai mixed", "POST", "/v1/embeddings", {"input": ["a", ids]}),
        ("openai no input", "POST", "/v1/embeddings", {"model": "bge-m3"}),
        ("openai surrogate", "POST", "/v1/embeddings", b'{"input": ["ok", "\\ud800"]}'),
        ("not json", "POST", "/v1/embeddings", b"{not json"),
        ("body too large", "POST", "/v1/embeddings", {"input": "x" * 30_000}),
        ("form content type", "POST", "/v1/embeddings", b'{"input": "curl -d"}'),
        ("encode all", "POST", "/encode", {"texts": ["a b", "東京"], "sparse": True, "colbert": True}),
        ("encode defaults", "POST", "/encode", {"texts": ["a b"]}),
        ("encode tokens", "POST", "/encode", {"texts": ["a b"], "sparse_tokens": True}),
        ("encode base64", "POST", "/encode", {"texts": ["a"], "colbert": True, "encoding_format": "base64",
                                              "dense_dtype": "int8", "colbert_dtype": "float16"}),
        ("encode strict long", "POST", "/encode", {"texts": ["a", LONG], "truncate": False}),
        ("encode chunk", "POST", "/encode", {"texts": [LONG], "overflow": "chunk", "colbert": True}),
        ("encode ids", "POST", "/encode", {"token_ids": [ids], "colbert": True}),
        ("encode bad id", "POST", "/encode", {"token_ids": [[0, 10**6, 2]]}),
        ("encode empty ids", "POST", "/encode", {"token_ids": [[]]}),
        ("encode both", "POST", "/encode", {"texts": ["a"], "token_ids": [ids]}),
        ("encode neither", "POST", "/encode", {}),
        ("encode no output", "POST", "/encode", {"texts": ["a"], "dense": False, "sparse": False}),
        ("encode extra field", "POST", "/encode", {"texts": ["a"], "colour": 1}),
        ("encode query", "POST", "/encode", {"texts": ["a"], "input_type": "passage"}),
        ("score", "POST", "/score", {"query": "q", "passages": ["a", "b"]}),
        ("score weights", "POST", "/score", {"query": "q", "passages": ["a"],
                                             "weights": {"dense": 2, "sparse": 1, "colbert": 0}}),
        ("score zero weights", "POST", "/score", {"query": "q", "passages": ["a"],
                                                  "weights": {"dense": 0, "sparse": 0}}),
        ("score too many", "POST", "/score", {"query": "q", "passages": ["a"] * 8}),
        ("score strict long", "POST", "/score", {"query": "q", "passages": [LONG], "truncate": False}),
        ("tei embed", "POST", "/embed", {"inputs": ["a", "b"]}),
        ("tei root", "POST", "/", {"inputs": "a"}),
        ("tei long default", "POST", "/embed", {"inputs": [LONG]}),
        ("tei long truncate", "POST", "/embed", {"inputs": [LONG], "truncate": True}),
        ("tei normalize false", "POST", "/embed", {"inputs": "a", "normalize": False}),
        ("tei left", "POST", "/embed", {"inputs": "a", "truncation_direction": "left"}),
        ("tei prompt", "POST", "/embed", {"inputs": "a", "prompt_name": "query"}),
        ("tei ids", "POST", "/embed", {"inputs": ids}),
        ("tei big id", "POST", "/embed", {"inputs": [[0, 10**12, 2]]}),
        ("tei sparse", "POST", "/embed_sparse", {"inputs": ["a b c"]}),
        ("tei all", "POST", "/embed_all", {"inputs": ["a b"]}),
        ("tokenize", "POST", "/tokenize", {"inputs": ["hello 東京"]}),
        ("tokenize one", "POST", "/tokenize", {"inputs": "hello", "add_special_tokens": False}),
        ("tokenize prompt", "POST", "/tokenize", {"inputs": ["hello"], "prompt_name": "query"}),
        ("tokenize empty", "POST", "/tokenize", {"inputs": []}),
        ("decode", "POST", "/decode", {"ids": [ids, ids[1:3]]}),
        ("decode flat", "POST", "/decode", {"ids": ids, "skip_special_tokens": False}),
        ("decode bad nested", "POST", "/decode", {"ids": [ids, [5, 10**6]]}),
        ("decode bad flat", "POST", "/decode", {"ids": [5, -1]}),
    ]
    auth = [("auth missing", "POST", "/auth/embed", {"inputs": "a"}),
            ("auth health", "GET", "/auth/health", None)]
    return cases + auth


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, list):
        return [_round(v) for v in value]
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items() if k not in VARYING}
    return value


def record(url: str) -> list[dict]:
    """Send every request to the service at `url`; the normalized answers."""
    out = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, method, path, body in requests():
            headers = {"content-type": "application/x-www-form-urlencoded"} if name == "form content type" else {}
            if isinstance(body, bytes):
                response = client.request(method, path, content=body, headers=headers)
            else:
                response = client.request(method, path, json=body, headers=headers)
            try:
                payload = _round(response.json())
            except ValueError:
                payload = response.text
            out.append({"name": name, "status": response.status_code, "body": payload,
                        "headers": {h: response.headers.get(h) for h in HEADERS if h in response.headers}})
        for name, key in (("auth wrong key", "nope"), ("auth right key", KEY)):
            response = client.post("/auth/embed", json={"inputs": "a"}, headers={"Authorization": f"Bearer {key}"})
            out.append({"name": name, "status": response.status_code, "body": _round(response.json())})
    return out


def main(model_dir: str, out: str) -> None:
    """Deploy, record, write `out`."""
    import ray
    from ray import serve

    from serve_app.app import build_app
    from tests.conftest import free_port

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    encoder = {"model": str(Path(model_dir).resolve()), "device": "cpu", "dtype": "fp32", "max_length": 64,
               "instructions": {"query": "query: "}}
    limits = {"max_texts_per_request": 8, "max_body_bytes": 20_000}
    keys = Path(tempfile.mkdtemp()) / "keys"
    keys.write_text(KEY + "\n")
    serve.run(build_app({"encoder": encoder, "limits": limits, "cache": {"backend": "off"}}), name="main",
              route_prefix="/")
    serve.run(build_app({"encoder": encoder, "limits": limits, "auth": {"api_keys_file": str(keys)}}), name="auth",
              route_prefix="/auth")
    try:
        answers = record(f"http://127.0.0.1:{port}")
    finally:
        serve.shutdown()
        ray.shutdown()
    Path(out).write_text(json.dumps(answers, indent=1, ensure_ascii=False, sort_keys=True))
    print(f"{len(answers)} answers written to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
