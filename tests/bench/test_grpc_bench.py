"""bench/grpc_vs_http.py without a server: both transports send the same texts per request, and the report
puts each HTTP row beside its gRPC twin."""

from __future__ import annotations

import json

import grpc

from bench import grpc_vs_http, report


def test_http_bodies_and_grpc_messages_carry_the_same_texts_per_request():
    texts = [f"{word} query" for word in ("alpha", "bravo", "charlie", "delta")]
    with grpc.insecure_channel("127.0.0.1:1") as channel:  # stubs only: nothing is sent
        for api, per_request in grpc_vs_http.PAIRS:
            groups = grpc_vs_http._groups(texts, min(per_request, 2))
            route, bodies = grpc_vs_http.http_bodies(api, groups)
            _, messages = grpc_vs_http.grpc_calls(api, channel, groups)
            for group, body, message in zip(groups, bodies, messages, strict=True):
                sent = json.loads(body)
                if api == "tei":
                    assert route == "/embed" and [sent["inputs"]] == [message.inputs] == group[:1]
                else:
                    assert route == "/encode" and sent["texts"] == list(message.texts) == group
                    assert sent["dense"] and message.dense


def _row(transport: str, rps: float, cpu: float) -> dict:
    return {"mode": "haproxy", "api": "tei", "texts_per_request": 1, "concurrency": 64, "transport": transport,
            "requests_per_s": rps, "p50_ms": 10.0, "server_cpu_ms_per_request": cpu, "errors": 0}


def test_the_report_pairs_each_http_row_with_its_grpc_row_and_rates_colbert_against_json():
    result = {"benchmark": "grpc-vs-http", "command": "python -m bench.grpc_vs_http", "machine": "x, 2 cores",
              "rows": [_row("http", 400.0, 2.0), _row("grpc", 600.0, 1.5)], "colbert_passages": 8,
              "colbert_mode": "haproxy", "colbert": {"http-json": {"bytes": 1000, "ms": 30.0},
                                                     "grpc-f32": {"bytes": 400, "ms": 10.0}}}
    table = report.grpc_table(result)
    assert "| haproxy | `/embed` vs `Embed` | 1 | 64 | 400 | 600 | **1.50** | 10.0 | 10.0 | 2.00 | 1.50 | 0 |" in table
    assert "| grpc-f32 | 400 | 10.0 | 3.00x |" in table
