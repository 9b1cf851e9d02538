"""bench/soak.py, bench/cold_start.py and bench/profile_replicas.py without a server: the soak's requests are
valid bodies of their routes and its texts new, its slope is the growth the samples show, the cold start's
spans add up from placement to the first answer, and the CPU split takes the forward pass out."""

from __future__ import annotations

import pytest

from bench import cold_start, soak
from serve_app.http.protocol import EncodeBody, OpenAIEmbeddingRequest, TeiEmbedRequest

BODIES = {"/v1/embeddings": OpenAIEmbeddingRequest, "/encode": EncodeBody, "/embed_sparse": TeiEmbedRequest}


def test_each_soak_route_sends_a_valid_body_of_that_route_and_counts_its_results():
    texts = soak.Texts(seed=1).take(3)
    for route, body, _ in soak.ROUTES:
        assert BODIES[route].model_validate(body(texts))
    encode = EncodeBody.model_validate(soak._encode(texts))
    assert encode.dense and encode.sparse and encode.colbert  # ColBERT and sparse are in the mix
    assert soak._count_openai({"data": [{}, {}]}) == 2 and soak._count_sparse([[], [], []]) == 3


def test_soak_texts_are_distinct_within_a_request_and_mostly_new():
    texts = soak.Texts(seed=2, repeat=0.1)
    requests = [texts.take(16) for _ in range(300)]
    assert all(len(set(r)) == len(r) for r in requests)
    flat = [t for r in requests for t in r]
    assert 0.8 < len(set(flat)) / len(flat) < 0.97  # ~10% drawn again: the cache both hits and evicts


@pytest.mark.parametrize("growth", [0.0, 0.5])
def test_soak_slope_is_the_growth_after_warm_up(growth):
    samples = [{"minute": m / 2, "rss_mb": {"model": 1000 + (200 if m < 20 else 0) + growth * m / 2,
                                            "proxy": None if m == 30 else 250.0}} for m in range(120)]
    result = soak.slopes(samples, warmup_min=10)
    assert result["model"]["slope_mb_per_min"] == pytest.approx(growth, abs=1e-6)
    assert result["model"]["below_target"] == (growth < soak.TARGET_MB_PER_MIN)
    assert result["proxy"]["slope_mb_per_min"] == pytest.approx(0, abs=1e-6)  # a missing sample is skipped


def test_cold_start_spans_run_from_placement_to_the_first_answer():
    marks = {"placed": 100.0, "process": 99.0, "import_started": 102.0, "imported": 104.5, "init_started": 104.6,
             "model_loaded": 108.0, "ready": 108.1, "first_answer": 108.9}
    spans = cold_start.spans(marks)
    assert spans["placement -> process"] == 0  # a worker Ray started earlier is taken at placement
    assert spans["model load"] == pytest.approx(3.4)
    assert sum(spans.values()) == pytest.approx(marks["first_answer"] - marks["placed"])


def test_cpu_split_takes_the_measured_forward_passes_out_of_the_model_replicas_cpu():
    from bench import profile_replicas, report

    row = {"texts_per_request": 1, "concurrency": 64, "requests_per_s": 500.0, "p50_ms": 12.0,
           "cpu_ms_per_request": {"model": 0.9, "ingress": 1.0, "haproxy": 0.15}, "compute_thread_ms": 0.5,
           "forward_ms": 0.36, "kinds": {"model": {}, "ingress": {}}}
    split = profile_replicas.split(row)
    assert split == {"model_forward_ms": 0.36, "compute_rest_ms": 0.14, "model_non_forward_ms": 0.54}
    table = report.cpu_split_table({"command": "python -m bench.profile_replicas", "machine": "x, 2 cores",
                                    "rows": [{**row, **split}]})
    assert "| 1 | 64 | 500 | 12.0 | 0.15 | 1.00 | 0.90 | 0.36 | **0.54** | 0.14 |" in table


def test_gpu_projection_names_the_side_that_binds():
    from bench import report

    result = {"rows": [{"texts_per_request": 1, "concurrency": 64, "model_non_forward_ms": 0.5,
                        "cpu_ms_per_request": {"model": 0.9, "ingress": 1.0, "haproxy": 0.1}}]}
    table = report.gpu_projection_table(result, tokens_per_query=20, device_tokens_per_s=100_000)
    assert "| 1 | 1 | 2,000 | 1,000 | 10,000 | **1,000** | ingress |" in table  # one ingress binds first
    assert "| 1 | 4 | 2,000 | 4,000 | 10,000 | **2,000** | model replicas |" in table
    assert "| 4 | 16 | 8,000 | 16,000 | 10,000 | **5,000** | device |" in table  # 1e5 tokens/s / 20


def test_model_calls_fit_splits_per_request_from_per_call_and_shows_the_part_above_serves_floor():
    from bench import model_calls

    # non-forward = 0.1 + 2.0 / k; Serve's floor = 1.2 / k
    rows = [{"requests_per_call": k, "in_flight": 16, "requests_per_s": 100.0 * k, "model_ms": 0.2 + 2.0 / k,
             "forward_ms": 0.1, "non_forward_ms": 0.1 + 2.0 / k, "floor_ms": 1.2 / k} for k in (1, 4, 16, 64)]
    assert model_calls.fit(rows) == (pytest.approx(0.1), pytest.approx(2.0))
    assert model_calls.fit(rows, "floor_ms") == (pytest.approx(0.0, abs=1e-9), pytest.approx(1.2))
    table = model_calls.table({"command": "python -m bench.model_calls", "machine": "x, 2 cores", "rows": rows,
                               "fit": {"per_request_ms": 0.1, "per_call_ms": 2.0},
                               "floor": {"per_request_ms": 0.0, "per_call_ms": 1.2}})
    assert "| 4 | 16 | 400 | 0.700 | 0.100 | **0.600** | 0.300 | 0.300 |" in table  # above the floor: 0.6 - 0.3
    assert "Serve's floor alone: 0.000 ms per request + 1.20 ms per call" in table


def test_serve_floor_streams_the_models_items_an_admission_then_the_result_for_every_request():
    import asyncio

    from bench.model_calls import ServeFloor

    async def items() -> list:
        return [update async for update in ServeFloor("a result").encode_stream(["r0", "r1", "r2"])]

    first, answers = asyncio.run(items())
    assert first.answers == [] and answers.answers == [(0, "a result"), (1, "a result"), (2, "a result")]
