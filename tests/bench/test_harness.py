"""Smoke test of the benchmark harness on a tiny workload (the benchmarks themselves are scripts)."""

from __future__ import annotations

import json

from transformers import AutoTokenizer

from bench import serve_load
from bench.workload import make_workload, short_queries


def test_workload_is_seeded_and_has_the_length_mix(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = make_workload(40, tok, seed=3)
    assert texts == make_workload(40, tok, seed=3)
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    assert min(lengths) >= 8 and any(n >= 128 for n in lengths)
    assert all(8 <= len(tok(t)["input_ids"]) <= 40 for t in short_queries(10, tok))


def test_serve_load_runs_raw_and_a_server(tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.setattr(serve_load, "RESULTS", tmp_path)
    result = serve_load.main(["--model", tiny_model_dir, "--name", "ci-smoke", "--targets", "raw,naive",
                              "--levels", "1,4", "--texts-per-request", "1,4", "--duration", "1", "--n-texts", "32",
                              "--port", "8391"])
    assert result["raw"]["texts_per_s"] > 0
    rows = result["rows"]
    assert [(r["concurrency"], r["texts_per_request"]) for r in rows] == [(1, 1), (4, 1), (1, 4), (4, 4)]
    assert all(r["errors"] == 0 and r["requests"] > 0 and r["p95_ms"] >= r["p50_ms"] for r in rows)
    assert json.loads((tmp_path / "ci-smoke.json").read_text())["name"] == "ci-smoke"
    assert (tmp_path / "ci-smoke.png").stat().st_size > 0
