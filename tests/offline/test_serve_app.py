"""The offline job through a running Serve application (`serve_app`): real Serve, real Ray Data, the small
checkpoint in fp32, no mocks.

Two apps serve every test here, deployed once, side by side: `offline-a` runs the model deployment on
`tests/support/devices.py::SlowDevice` (the real encoder, which can be held mid-batch), `offline-b` the same
checkpoint at another `max_length` (another model identity). Neither has a cache: every text reaches the
device, so a replica's `counts` say what it computed.
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest
import ray
from ray import serve

from serve_app.offline import OfflineJob, embed_corpus
from serve_app.offline.__main__ import main
from serve_app.serving.deployments import MODEL_DEPLOYMENT, model_deployment_options
from tests.offline.corpora import manifest, rows_by_id, write_jsonl
from tests.support.devices import SlowDevice
from tests.support.faults import kill_model_replica, model_replicas
from tests.support.waiting import wait_until

APP, OTHER = "offline-a", "offline-b"


@pytest.fixture(scope="module")
def apps(serve_instance, encoder_config) -> dict:
    """The two apps' model handles, by name (no HTTP: the job calls the model deployment alone)."""
    options = model_deployment_options()
    handles = serve.run_many([
        serve.RunTarget(serve.deployment(SlowDevice, **options).bind(encoder_config), name=APP, route_prefix=None),
        serve.RunTarget(serve.deployment(SlowDevice, **options).bind(encoder_config.model_copy(
            update={"max_length": 32})), name=OTHER, route_prefix=None)])
    return dict(zip([APP, OTHER], handles, strict=True))


def texts(n: int, tag: str) -> list[dict]:
    """`n` distinct rows (ids `tag-i`), short and long, English and Japanese."""
    words = ["river", "東京", "library", "museum", "mountain", "図書館", "search", "coffee"]
    return [{"doc_id": f"{tag}-{i}", "text": " ".join(words[(i + k) % len(words)] for k in range(1 + i % 23))}
            for i in range(n)]


def counts(handle) -> dict:
    return handle.info.remote().result()["counts"]


def actors(callable_name: str) -> set[str]:
    """Ids of every actor (any state) this Ray has seen run a `map_batches` pool of `callable_name` (Ray Data
    names the class `MapWorker(MapBatches(<callable>))`). Read from the GCS: `ray.util.state.list_actors`
    needs the dashboard, which the suite's Ray runs without."""
    from ray._private import state

    return {actor_id for actor_id, actor in state.actors().items()
            if f"MapBatches({callable_name})" in actor["ActorClassName"]}


@pytest.fixture(scope="module")
def served(apps, tmp_path_factory) -> dict:
    """One job through `offline-a` (ColBERT on, a row the reader refuses among them), with what it left."""
    root = tmp_path_factory.mktemp("served")
    write_jsonl(root / "in" / "a.jsonl", [*texts(30, "a"), {"doc_id": "null", "text": None}])
    write_jsonl(root / "in" / "b.jsonl", texts(12, "b"))
    encoders_before, counts_before = actors("EncodeBatch"), counts(apps[APP])
    job = OfflineJob(input=str(root / "in"), output=str(root / "out"), id_field="doc_id", colbert=True,
                     serve_app=APP, batch_size=8)
    summary = embed_corpus(job)
    pool = actors("ServeBatch")
    return {"root": root, "job": job, "summary": summary, "new_encoders": actors("EncodeBatch") - encoders_before,
            "pool": pool, "texts": counts(apps[APP]).get("texts", 0) - counts_before.get("texts", 0)}


def test_vectors_equal_the_dedicated_pools_and_no_encoder_of_its_own(served, encoder_config):
    summary = served["summary"]
    assert (summary.rows, summary.errors, summary.shards_done) == (42, 1, 2), summary
    assert served["pool"], "the job's ServeBatch actors were not seen: the check below would prove nothing"
    assert not served["new_encoders"], "the job started an encoder actor of its own"
    assert served["texts"] == 42, "the app's replica did not compute exactly the job's texts"

    # One CPU: the apps' replicas hold two of the suite's four.
    dedicated = served["job"].model_copy(update={"serve_app": None, "encoder": encoder_config, "num_cpus": 1.0,
                                                 "output": str(served["root"] / "dedicated")})
    embed_corpus(dedicated)
    got, expected = rows_by_id(served["job"].output), rows_by_id(dedicated.output)
    assert got.keys() == expected.keys() and len(got) == 42
    for key, row in got.items():
        want = expected[key]
        np.testing.assert_allclose(row["dense"], want["dense"], atol=1e-6)
        assert row["sparse_indices"] == want["sparse_indices"]
        np.testing.assert_allclose(row["sparse_values"], want["sparse_values"], atol=1e-6)
        np.testing.assert_allclose(np.array(row["colbert"]), np.array(want["colbert"]), atol=1e-6)
        assert (row["n_tokens"], row["truncated"]) == (want["n_tokens"], want["truncated"])
    errors = rows_by_id(served["job"].output, "errors")
    assert errors.keys() == {"null"} and errors["null"]["error"] == "null text" and errors["null"]["row"] == 31


def test_a_refused_text_is_one_error_row_the_rest_are_embedded(apps, tmp_path):
    vocab = apps[APP].info.remote().result()["vocab_size"]
    rows = [{"doc_id": f"ids-{i}", "ids": [0, 10 + i, 20 + i, 2]} for i in range(5)]
    rows[2]["ids"] = [0, 10, vocab + 7, 2]  # in any vocabulary (the reader lets it through), not this model's
    write_jsonl(tmp_path / "in" / "ids.jsonl", rows)
    summary = embed_corpus(OfflineJob(input=str(tmp_path / "in"), output=str(tmp_path / "out"), ids_field="ids",
                                      id_field="doc_id", serve_app=APP))
    assert (summary.rows, summary.errors) == (4, 1), summary
    assert set(rows_by_id(tmp_path / "out")) == {"ids-0", "ids-1", "ids-3", "ids-4"}
    [error] = rows_by_id(tmp_path / "out", "errors").values()
    assert error["id"] == "ids-2" and error["row"] == 3 and error["file"] == str(tmp_path / "in" / "ids.jsonl")
    assert error["error"] == f"token ids[2] is {vocab + 7}, outside the vocabulary [0, {vocab})", error


def test_a_resume_against_an_app_of_another_identity_is_refused_before_any_request(apps, served):
    job = served["job"].model_copy(update={"serve_app": OTHER})
    before, recorded = counts(apps[OTHER]), manifest(job.output)
    with pytest.raises(ValueError, match=r"different job \(max_length: 64 there, 32 now\)"):
        embed_corpus(job)
    assert counts(apps[OTHER]) == before, "a request reached the other app's replica"
    assert manifest(job.output) == recorded


def test_a_model_replica_killed_mid_job_loses_and_duplicates_no_row(apps, tmp_path):
    model = apps[APP]
    write_jsonl(tmp_path / "in" / "k.jsonl", texts(60, "k"))
    job = OfflineJob(input=str(tmp_path / "in"), output=str(tmp_path / "out"), id_field="doc_id", serve_app=APP,
                     batch_size=6, in_flight_per_replica=3)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = embed_corpus(job)
        except BaseException as exc:  # the test thread reports it
            outcome["error"] = exc

    model.hold.remote().result()  # the job cannot finish before the kill: its first batch waits on the device
    killed = model_replicas(APP)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: model.state.remote().result()["in_forward"] > 0, 60), "no batch reached the device"
        kill_model_replica(APP)
    finally:
        thread.join(120)
    assert not thread.is_alive() and "error" not in outcome, outcome
    assert outcome["summary"].rows == 60 and outcome["summary"].errors == 0
    assert sorted(rows_by_id(job.output)) == sorted(f"k-{i}" for i in range(60))  # each exactly once
    assert model_replicas(APP) != killed  # answered by the replacement
    assert serve.status().applications[APP].deployments[MODEL_DEPLOYMENT].status == "HEALTHY"
    assert ray.is_initialized()


def test_the_cli_refuses_model_settings_with_serve_app(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--serve-app", "bge-m3",
              "--model", "BAAI/bge-m3"])
    assert exit_.value.code == 2
    message = capsys.readouterr().err
    assert "--model cannot be given with --serve-app bge-m3" in message
    assert "args.encoder" in message and "args.cache" in message, message


def test_an_answer_of_another_identity_stops_the_job_naming_both(apps, encoder_config):
    # What a redeploy with other settings mid-job looks like to the job's actor: its identity is `offline-a`'s
    # (resolved at the start), the replicas that answer now are `offline-b`'s (max_length 32).
    from serve_app.offline.via_serve import IdentityChangedError, ServeBatch, app_identity

    (job_identity, dim), (now_identity, _) = app_identity(APP), app_identity(OTHER)
    before = counts(apps[OTHER]).get("texts", 0)
    actor = ServeBatch(OTHER, job_identity, dim)
    rows = pa.table({"shard": pa.array([0], pa.int32()), "row": [1], "id": ["x"], "text": ["a text"],
                     "error": pa.nulls(1, pa.string())})
    with pytest.raises(IdentityChangedError) as refused:
        actor(rows)
    message = str(refused.value)
    assert str(now_identity.model_dump()) in message and str(job_identity.model_dump()) in message, message
    assert "'max_length': 32" in message and "'max_length': 64" in message
    assert counts(apps[OTHER]).get("texts", 0) == before + 1  # the one answer that told


def test_the_window_is_calls_per_running_replica_shared_by_the_actors(apps):
    from serve_app.offline.via_serve import Window

    assert [Window(APP, per_replica, actors).size() for per_replica, actors in [(2, 1), (3, 2), (1, 4)]] == [2, 2, 1]


def test_the_serve_app_callable_works_where_the_cluster_runs_handles_without_a_router_loop(apps, encoder_config):
    """Ray's throughput-optimized mode (RAY_SERVE_THROUGHPUT_OPTIMIZED, e.g. with HAProxy) turns
    RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP off cluster-wide; the job's actors call the replicas from threads,
    never from an event loop, so their handle must run its router's own loop whatever the cluster says."""
    from serve_app.offline.via_serve import ServeBatch, app_identity

    identity, dim = app_identity(APP)
    env = {"env_vars": {"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}}
    actor = ray.remote(num_cpus=0, runtime_env=env)(ServeBatch).remote(APP, identity, dim, timeout_s=20)
    rows = pa.table({"shard": [0, 0], "row": [0, 1], "id": ["x", "y"], "text": ["a river", "a mountain"]})
    out = ray.get(actor.__call__.remote(rows), timeout=60)
    assert out.column("dense").null_count == 0 and out.num_rows == 2
