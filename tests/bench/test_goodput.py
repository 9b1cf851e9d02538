"""The goodput benchmark's parts that need no service: its texts, its arrivals, its counting and its table."""

from __future__ import annotations

import json
import random

import pytest
from transformers import AutoTokenizer

from bench import goodput, report


def test_loads_parse_into_closed_and_open_loops():
    assert goodput.parse_load("callers4") == goodput.Load("callers4", callers=4)
    assert goodput.parse_load("2.5x") == goodput.Load("2.5x", times_capacity=2.5)
    with pytest.raises(ValueError, match="unknown load"):
        goodput.parse_load("fast")


def test_the_service_config_is_the_shipped_one_with_the_model_swapped_in():
    config = goodput.served_config("/models/m", 8000)
    assert goodput.config_changes(config) == {"applications.0.args.encoder.model": "/models/m"}
    assert goodput.served_encoder_config(config).model == "/models/m"


def test_texts_are_distinct_and_their_tokens_are_counted(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    source = goodput.TextSource(tok, "bge-m3", 8192, seed=0)
    requests = [source.request(goodput.SHAPES["short"]) for _ in range(20)]
    texts = [t for r in requests for t in json.loads(r.body)["input"]]
    assert len(texts) == len(set(texts)) == 20 * 16
    assert all(40 <= len(tok(t)["input_ids"]) <= 90 for t in texts)
    assert requests[0].tokens == sum(len(tok(t)["input_ids"]) for t in json.loads(requests[0].body)["input"])


def test_arrivals_keep_their_rate_and_window():
    times = goodput.arrivals(50, 100, random.Random(0))
    assert 4700 < len(times) < 5300 and times == sorted(times) and times[-1] < 100


def _record(sent: float, latency: float, status: str = "200", tokens: int = 100, **extra) -> dict:
    return {"sent_s": sent, "latency_s": latency, "ttfb_s": latency, "status": status, "tokens": tokens,
            "served_tokens": tokens, **extra}


def test_goodput_counts_200s_in_the_deadline_and_the_window_only():
    records = [_record(0, 1), _record(1, 2),  # delivered in the window
               _record(8, 5),  # answered after the 10 s window: not goodput
               _record(2, 0.01, "429", code="would_miss_deadline"), _record(3, 0.2, "429", code="overloaded"),
               _record(4, 61, "504"), _record(5, 0, "error")]
    row = goodput.summarize(records, duration=10, capacity_tps=40, deadline_s=60)
    assert row["goodput_tokens_per_s"] == 20 and row["goodput_x_capacity"] == 0.5
    assert row["offered_tokens_per_s"] == 70 and row["goodput_tokens_after_window"] == 100
    assert row["statuses"] == {"200": 3, "429": 2, "504": 1, "error": 1}
    assert row["shares"]["other"] == round(1 / 7, 4) and row["r504"] == 1
    assert row["r429_within_50ms"] == 0.5 and row["r429_codes"] == {"would_miss_deadline": 1, "overloaded": 1}


def test_report_renders_a_goodput_run(tmp_path):
    rows = [{"input": "long", "load": "4x", "times_capacity": 4.0,
             **goodput.summarize([_record(0, 1), _record(1, 0.01, "429")], 10, 10, 60)}]
    run = {"benchmark": "goodput", "command": "python -m bench.goodput --model m", "model": "m",
           "encoder_described": {"dtype": "fp32", "torch_threads": 1},
           "machine": {"processor": "x86_64", "cpu_count": 2}, "duration_s": 10, "deadline_s": 60,
           "capacity": {"long": {"tokens_per_s": 10, "tokens_per_request": 100}}, "rows": rows}
    (tmp_path / "g.json").write_text(json.dumps(run))
    table = report.render("g", tmp_path)
    assert "| long | 4x | 20 (2.00x) | 10 | **1.00** | 2 | 1 (50%) | 1 (50%) | 0 (0%) | 0 (0%) |" in table
    assert "long: goodput 1.00x (met)" in table and "Every 429 within 50 ms: yes" in table
