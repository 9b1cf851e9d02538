"""bench/token_ids.py without a server: the bodies it sends and the medians and ratios it reports."""

from __future__ import annotations

import json

from transformers import AutoTokenizer

from bench import report, token_ids
from bench.workload import short_queries


def test_each_text_and_its_ids_make_one_input_per_request_with_the_tokenizers_special_tokens(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = short_queries(5, tokenizer, seed=1)
    bodies = token_ids.payloads(texts, tokenizer)
    for text, by_text, by_ids in zip(texts, bodies["text"], bodies["ids"], strict=True):
        assert json.loads(by_text)["input"] == [text]
        [ids] = json.loads(by_ids)["input"]
        assert ids == tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.eos_token_id


def _phase(rps: float, ingress_ms: float, model_ms: float) -> dict:
    return {"requests_per_s": rps, "p50_ms": 100.0, "p95_ms": 200.0, "errors": 0,
            "cpu_ms_per_request": {"ingress": ingress_ms, "model": model_ms}}


def test_the_report_gives_the_medians_over_rounds_and_the_ids_to_text_ratios():
    rounds = [{"text": _phase(400, 1.0, 0.8), "ids": _phase(500, 0.9, 0.6)},
              {"text": _phase(420, 1.2, 0.9), "ids": _phase(520, 1.1, 0.7)},
              {"text": _phase(380, 1.1, 1.0), "ids": _phase(480, 1.0, 0.5)}]
    median = token_ids.summarize(rounds)
    assert median["text"]["requests_per_s"] == 400 and median["ids"]["requests_per_s"] == 500
    assert median["ids"]["cpu_ms_per_request"] == {"ingress": 1.0, "model": 0.6}
    table = report.token_ids_table({"benchmark": "token-ids", "command": "python -m bench.token_ids", "concurrency": 64,
                                    "seconds": 10, "rounds": rounds, "median": median})
    assert "| ids / text | 1.25x | | | 0.91x | 0.67x |" in table
