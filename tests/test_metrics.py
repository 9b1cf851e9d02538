"""Observability as a Ray user gets it: Ray started with a metrics export port, real HTTP traffic, and the
project's metrics and Serve's replica gauge read back from the Prometheus endpoints that Ray's service
discovery file lists (what a Prometheus server pointed at that file scrapes); and the shipped Grafana
dashboard queries only metrics that exist."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families
from ray import serve
from ray.serve.metrics import Counter, Gauge, Histogram

from serve_app.app import INGRESS_DEPLOYMENT, MODEL_DEPLOYMENT, build_app
from serve_app.serving.metrics import ModelMetrics
from tests.conftest import free_port
from tests.support.waiting import wait_until

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "bge-m3-dashboard.json"
APP = "metered"
MAX_LENGTH = 32  # small, so one text is truncated and one over-long `truncate: false` text is refused
LONG = " ".join(["the museum by the river keeps old maps of the mountains"] * 8)  # > MAX_LENGTH tokens
# Round one: distinct texts (every one a cache miss), sent together so the model may coalesce them.
FIRST = [[f"metered text {i} about rivers", f"東京 {i} の図書館"] for i in range(5)] + [[LONG, "short one"]]
REPEATS = FIRST[:3]  # round two: the same requests again, answered wholly from the cache
BAD = {"texts": ["refused " + LONG], "truncate": False}  # 413 from the model replica: InputTooLongError
DEADLINE_S = 90  # Ray exports metrics every few seconds; a loaded 2-core machine may take a few rounds


# --- the names the service exports -------------------------------------------------------------------

def exported_names() -> set[str]:
    """What Ray's Prometheus export calls each metric of `serving/metrics.py`: the `ray_` prefix, plus
    `_total` for a counter and `_bucket`/`_count`/`_sum` for a histogram."""
    names: set[str] = set()
    for metric in vars(ModelMetrics()).values():
        base = "ray_" + metric.info["name"]
        if isinstance(metric, Counter):
            names.add(base + "_total")
        elif isinstance(metric, Histogram):
            names.update(base + suffix for suffix in ("_bucket", "_count", "_sum"))
        else:
            assert isinstance(metric, Gauge), metric
            names.add(base)
    return names


def serve_names() -> set[str]:
    """Ray Serve's own metric names, as Ray's own Serve dashboards (in the installed Ray) query them."""
    from ray.dashboard.modules.metrics.dashboards.serve_dashboard_panels import SERVE_GRAFANA_PANELS
    from ray.dashboard.modules.metrics.dashboards.serve_deployment_dashboard_panels import (
        SERVE_DEPLOYMENT_GRAFANA_PANELS,
    )

    return {name for panel in SERVE_GRAFANA_PANELS + SERVE_DEPLOYMENT_GRAFANA_PANELS
            for target in panel.targets for name in _metric_names(target.expr)}


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bray_[a-z0-9_]+", expr))


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: its panels' targets and its variables' queries."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


# --- the dashboard -----------------------------------------------------------------------------------

def test_dashboard_queries_only_metrics_the_service_exports_and_charts_every_one():
    """No panel queries a metric that does not exist (a renamed metric breaks this test, not a panel
    silently), and every project metric has a panel."""
    queried = {name for expr in dashboard_queries() for name in _metric_names(expr)}
    ours, serves = exported_names(), serve_names()
    assert queried <= ours | serves, sorted(queried - ours - serves)
    charted = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in queried & ours}
    assert charted == {"ray_" + m.info["name"] for m in vars(ModelMetrics()).values()}


def test_dashboard_is_importable_next_to_rays_serve_dashboard():
    """Grafana's import needs unique panel ids and a uid of its own; every panel reads the templated
    Prometheus datasource, so the import asks for nothing and works with any datasource name."""
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["uid"] != "rayServeDashboard" and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    [datasource] = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]


# --- the live export ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def metered(own_ray, encoder_config):
    """Ray as a user starts it for metrics (a metrics export port, the dashboard, which writes the service
    discovery file) with the app on a free loopback port; yields (base URL, session directory, export port)."""
    metrics_port = free_port()
    context = ray.init(address="local", num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1",
                       dashboard_port=free_port(), _metrics_export_port=metrics_port, log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = {"encoder": encoder_config.model_copy(update={"max_length": MAX_LENGTH}).model_dump(),
                "cache": {"backend": "memory"}}
        serve.run(build_app(args), name=APP, route_prefix="/")
        yield f"http://127.0.0.1:{port}", Path(context.address_info["session_dir"]), metrics_port
    finally:
        serve.shutdown()
        ray.shutdown()


def _targets(session_dir: Path) -> list[str]:
    """The scrape targets in this session's service discovery file (Prometheus `file_sd` format); Ray's
    dashboard rewrites it every few seconds. (/tmp/ray/prom_metrics_service_discovery.json links to the
    newest session's, which on a shared machine may be someone else's.)"""
    path = session_dir / "prom_metrics_service_discovery.json"
    assert wait_until(path.exists, DEADLINE_S, interval=0.5), f"{path} was never written"
    return [target for group in json.loads(path.read_text()) for target in group["targets"]]


def _scrape(targets: list[str]) -> dict[tuple[str, frozenset], float]:
    """Every sample of every target: (name, labels) -> value."""
    samples = {}
    for target in targets:
        text = httpx.get(f"http://{target}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def _total(samples: dict, name: str, **labels: str) -> float:
    """One metric summed over the series (replicas, tags) that carry `labels`, in this app only."""
    wanted = {("application", APP), *labels.items()}
    return sum(value for (n, tags), value in samples.items() if n == name and wanted <= tags)


def _buckets(samples: dict, name: str) -> dict[float, float]:
    """A histogram's cumulative buckets (upper bound -> count), summed over the model's replicas."""
    buckets: dict[float, float] = {}
    for (n, tags), value in samples.items():
        labels = dict(tags)
        if n == f"{name}_bucket" and labels.get("application") == APP:
            bound = float(labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    return buckets


def test_scrape_counts_the_traffic_sent(metered):
    """Requests, texts, tokens, truncations, cache hits and misses, an error by kind, batch and queue
    histograms and Serve's healthy-replica gauge, as a Prometheus server pointed at Ray's service discovery
    file sees them, equal what was sent; and every metric the dashboard queries is there."""
    url, session_dir, metrics_port = metered
    with httpx.Client(base_url=url, timeout=60) as client:
        with ThreadPoolExecutor(len(FIRST)) as pool:
            first = list(pool.map(lambda texts: client.post("/encode", json={"texts": texts}), FIRST))
        assert [r.status_code for r in first] == [200] * len(FIRST), [r.text for r in first]
        for texts in REPEATS:
            repeated = client.post("/encode", json={"texts": texts})
            assert repeated.status_code == 200 and repeated.headers["x-batch-requests"] == "0", repeated.headers
        bad = client.post("/encode", json=BAD)
        assert bad.status_code == 413, bad.text

    computed_texts = sum(len(texts) for texts in FIRST)
    expected = {  # counters, summed over replicas and tags
        "ray_bge_m3_requests_total": len(FIRST) + len(REPEATS) + 1,
        "ray_bge_m3_texts_total": computed_texts,  # cache hits and the refused text never reach a batch
        "ray_bge_m3_tokens_total": sum(r.json()["usage"]["prompt_tokens"] for r in first),
        "ray_bge_m3_truncations_total": 1,  # LONG
        "ray_bge_m3_cache_hits_total": sum(len(texts) for texts in REPEATS),
        "ray_bge_m3_cache_misses_total": computed_texts + len(BAD["texts"]),
        "ray_bge_m3_queue_latency_ms_count": len(FIRST),  # one wait per request that reached a batch
    }
    queried = {name for expr in dashboard_queries() for name in _metric_names(expr)}
    targets = _targets(session_dir)
    assert any(t.endswith(f":{metrics_port}") for t in targets), targets  # the node's agent, on the port asked
    samples: dict = {}

    def all_exported() -> bool:  # counters only grow: wait until each has reached its value, then compare
        samples.clear()
        samples.update(_scrape(targets))
        healthy = [_total(samples, "ray_serve_deployment_replica_healthy", deployment=d)
                   for d in (MODEL_DEPLOYMENT, INGRESS_DEPLOYMENT)]
        return (all(_total(samples, n) >= v for n, v in expected.items()) and all(healthy) and queried <= scraped()
                and _total(samples, "ray_bge_m3_errors_total", kind="InputTooLongError") > 0)

    def scraped() -> set[str]:
        return {name for name, _ in samples}

    wait_until(all_exported, DEADLINE_S, interval=1)  # the comparisons below say what was missing, if anything
    got = {name: _total(samples, name) for name in expected}
    healthy = {d: _total(samples, "ray_serve_deployment_replica_healthy", deployment=d)
               for d in (MODEL_DEPLOYMENT, INGRESS_DEPLOYMENT)}
    errors = _total(samples, "ray_bge_m3_errors_total", kind="InputTooLongError")

    assert got == expected, targets
    assert errors == 1 and _total(samples, "ray_bge_m3_errors_total") == 1
    # /encode's default outputs, the `outputs` tag of every request
    assert _total(samples, "ray_bge_m3_requests_total", outputs="dense+sparse") == got["ray_bge_m3_requests_total"]
    assert healthy == {MODEL_DEPLOYMENT: 1, INGRESS_DEPLOYMENT: 1}
    assert _total(samples, "ray_bge_m3_cache_bytes") > 0

    # Batch histograms: one observation per model batch in each; batches hold 1..len(FIRST) requests
    # and, as every request has two texts, at least two texts. (Ray exports a histogram's _sum from
    # bucket midpoints, so only bucket counts are exact.)
    batches = _total(samples, "ray_bge_m3_batch_requests_count")
    assert 1 <= batches <= len(FIRST)
    for name in ("ray_bge_m3_batch_texts", "ray_bge_m3_batch_requests", "ray_bge_m3_batch_tokens",
                 "ray_bge_m3_encode_latency_ms"):
        buckets = _buckets(samples, name)
        assert buckets[float("inf")] == batches == _total(samples, name + "_count"), name
    assert _buckets(samples, "ray_bge_m3_batch_requests")[8.0] == batches  # the bound above len(FIRST)
    assert _buckets(samples, "ray_bge_m3_batch_texts")[1.0] == 0
    assert _buckets(samples, "ray_bge_m3_queue_latency_ms")[float("inf")] == len(FIRST)

    # Every metric a dashboard panel queries is in this scrape (Serve's HTTP error counter included: the 413).
    assert queried <= scraped(), sorted(queried - scraped())
