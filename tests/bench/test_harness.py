"""Smoke test of the benchmark harness on a tiny workload (the benchmarks themselves are scripts)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from bench import gpu_benchmark, report, serve_load, servers
from bench.workload import make_workload, short_queries
from serve_app.serving.config import AppArgs, BatchingConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def test_workload_is_seeded_and_has_the_length_mix(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = make_workload(40, tok, seed=3)
    assert texts == make_workload(40, tok, seed=3)
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    assert min(lengths) >= 8 and any(n >= 128 for n in lengths)
    assert all(8 <= len(tok(t)["input_ids"]) <= 40 for t in short_queries(10, tok))


class CountingTokenizer:
    """The real tokenizer, counting the tokens it produces for the workload generator."""

    def __init__(self, tokenizer):
        self.tokenizer, self.tokens = tokenizer, 0

    def __call__(self, text, **kwargs):
        out = self.tokenizer(text, **kwargs)
        self.tokens += len(out["input_ids"])
        return out


def test_workload_generation_is_linear_in_the_tokens_it_produces(tiny_model_dir):
    """Re-tokenizing each growing text every few words made 4,000 texts take minutes: the tokenizer must
    see about as many tokens as the workload holds, not a multiple that grows with text length."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    counting = CountingTokenizer(tok)
    texts = make_workload(100, counting, seed=0)
    produced = sum(len(tok(t)["input_ids"]) for t in texts)
    assert any(len(tok(t)["input_ids"]) >= 1024 for t in texts)  # long texts are in: the costly case
    assert counting.tokens < 3 * produced, (counting.tokens, produced)


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


def _reproduce_block() -> list[str]:
    """The commands of docs/benchmarks.md's Reproduce block, continuation lines joined, `.venv/bin/` dropped."""
    text = DOC.read_text().split("## Reproduce", 1)[1]
    block = text.split("```bash", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return [re.sub(r"\s+", " ", line.split("#")[0]).strip().replace(".venv/bin/python", "python")
            for line in block.splitlines() if line.strip()]


def test_reproduce_block_regenerates_the_tables_as_shipped():
    """The Reproduce block's report names committed runs whose tables are this page's, verbatim, and each
    run's recorded command is in the block (so re-running the block redoes exactly those runs)."""
    commands = _reproduce_block()
    [shipped] = [c for c in commands if c.startswith("python -m bench.report ") and "--results" not in c]
    names = shipped.split()[3:]
    assert {"small", "full", "cache-repeats", "offline-small"} <= set(names)
    doc = DOC.read_text()
    for name in names:
        assert report.render(name) in doc, name
        assert report.load(name)["command"] in commands, name


def test_gpu_sweep_sets_both_token_budgets():
    """Each budget of bench.gpu_benchmark's sweep sets the encoder's forward-pass budget and the queue's
    budget (the queue caps what a forward pass is given: raising only the encoder's measured the default)."""
    for budget in (16384, 32768, 65536):
        config = servers.ours_config("/models/m", 8123, **gpu_benchmark.server_settings(budget, 0.25, "cuda", "fp16"))
        app = config["applications"][0]
        args = AppArgs.model_validate(app["args"])
        user_config = BatchingConfig.model_validate(app["deployments"][0]["user_config"])
        assert (args.encoder.max_forward_tokens, user_config.max_queue_tokens) == (budget, budget)
        assert app["deployments"][0]["autoscaling_config"]["max_replicas"] == 4
        assert servers.check_budgets({"max_forward_tokens": budget, "batching": {"max_queue_tokens": budget}},
                                     config) == {"max_forward_tokens": budget, "max_queue_tokens": budget}
        with pytest.raises(RuntimeError, match="token budgets"):  # a server still on the default queue budget
            servers.check_budgets({"max_forward_tokens": budget, "batching": {"max_queue_tokens": budget // 2}},
                                  config)
    unset = servers.ours_config("/models/m", 8123)  # unset budgets: serve_config.yaml's, the typed defaults
    assert unset["applications"][0]["deployments"][0]["user_config"] == BatchingConfig().model_dump()


def test_step_load_deploys_serve_config_with_its_autoscaling_policy_and_bins_the_answers():
    """bench.step_load measures the shipped YAML: the model's policy and target stay, only the replica
    bound, half a CPU per replica and the delays change; its bins count 200s per second and their p95."""
    from ray.serve.schema import ServeDeploySchema

    from bench import step_load
    from serve_app.serving.autoscaling import POLICY_PATH
    from serve_app.serving.config import ModelAutoscaling

    config = step_load.service_config("/models/m", 8123, {"upscale_delay_s": 1.0})
    ServeDeploySchema.model_validate(config)
    model = next(d for d in config["applications"][0]["deployments"] if d["name"] == "EmbeddingModel")
    assert model["autoscaling_config"]["policy"] == {
        "policy_function": POLICY_PATH, "policy_kwargs": ModelAutoscaling().model_dump()}
    assert model["autoscaling_config"]["max_replicas"] == 2 and model["autoscaling_config"]["upscale_delay_s"] == 1.0
    assert model["ray_actor_options"]["num_cpus"] == 0.5
    answers = [(0.5, 0.1, "200"), (1.5, 0.3, "200"), (2.5, 1.0, "200"), (3.0, 0.0, "429")]
    bins = step_load.per_second(answers, 4.0)
    assert [b["ok_per_s"] for b in bins] == [1.0, 0.5] and bins[1]["other_statuses"] == 1
    assert bins[0]["p95_ms"] == pytest.approx(290.0)
