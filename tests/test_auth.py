"""Optional API keys (env var or file, constant-time check, /health open) and what reaches the logs:
no request text and no key, at INFO, on any path, including errors."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest
import ray
from ray import serve

from serve_app.app import build_app
from serve_app.core.errors import AuthConfigError
from serve_app.gateway.access import key_matches, load_api_keys
from serve_app.serving.config import AuthConfig
from tests.support.waiting import wait_until, wait_until_async

KEYS = ["sk-first-0f3a9c", "sk-second-77d1e2"]
CANARY = "zebra-canary-4471 confidential passage"


def test_keys_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEYS", " alpha, beta ,,")
    keys_file = tmp_path / "keys"
    keys_file.write_text("gamma\n\n  delta  \n")
    digests = load_api_keys(AuthConfig(api_keys_env="MY_KEYS", api_keys_file=str(keys_file)))
    assert len(digests) == 4 and all(key_matches(k, digests) for k in ["alpha", "beta", "gamma", "delta"])
    assert not key_matches("alph", digests) and not key_matches("", digests) and not key_matches("alpha ", digests)
    assert b"alpha" not in b"".join(digests)  # only digests are kept
    monkeypatch.delenv("MY_KEYS")
    assert load_api_keys(AuthConfig(api_keys_env="MY_KEYS")) == []  # nothing set: auth off


def test_configured_but_unusable_key_file_refuses_to_start(tmp_path):
    with pytest.raises(AuthConfigError, match="cannot be read"):
        load_api_keys(AuthConfig(api_keys_file=str(tmp_path / "missing")))
    (tmp_path / "empty").write_text("\n \n")
    with pytest.raises(AuthConfigError, match="holds no key"):
        load_api_keys(AuthConfig(api_keys_file=str(tmp_path / "empty")))


@pytest.fixture(scope="module")
def apps(serve_instance, encoder_config, tmp_path_factory):
    """The module's two services, deployed together (their replicas start side by side, ~13 s saved):
    "bge-m3" at / with keys from a file and at most 4 texts a request; and "prefixed", with keys on,
    under a route prefix (Serve passes root_path=/bge, path=/bge/...), and admission at one pending
    request, so that a held request fills it."""
    keys_file = tmp_path_factory.mktemp("secrets") / "api_keys"
    keys_file.write_text("\n".join(KEYS) + "\n")
    auth = {"api_keys_file": str(keys_file)}
    encoder = encoder_config.model_dump()
    serve.run_many([
        serve.RunTarget(build_app({"encoder": encoder, "limits": {"max_texts_per_request": 4}, "auth": auth}),
                        name="bge-m3", route_prefix="/"),
        serve.RunTarget(build_app({"encoder": encoder, "limits": {"max_pending_requests": 1}, "auth": auth}),
                        name="prefixed", route_prefix=PREFIX)])
    yield serve_instance
    serve.delete("prefixed")


@pytest.fixture(scope="module")
def url(apps) -> str:
    return apps


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_every_route_but_health_needs_a_key(url):
    with httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/health").status_code == 200
        for method, path, body in [("POST", "/encode", {"texts": ["hi"]}), ("POST", "/v1/embeddings", {"input": "hi"}),
                                   ("POST", "/score", {"query": "q", "passages": ["p"]}), ("GET", "/info", None),
                                   ("GET", "/v1/models", None), ("GET", "/openapi.json", None),
                                   ("GET", "/docs", None), ("GET", "/no-such-route", None)]:
            missing = client.request(method, path, json=body)
            assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer", (path, missing.text)
            assert missing.json()["error"]["code"] == "missing_api_key"
            for wrong in [bearer("sk-wrong"), bearer(KEYS[0][:-1]), {"Authorization": KEYS[0]},
                          {"Authorization": f"Basic {KEYS[0]}"}]:
                status = client.request(method, path, json=body, headers=wrong).status_code
                assert status in (401, 403), (path, wrong, status)
            assert client.request(method, path, json=body, headers=bearer("sk-wrong")).status_code == 403
            for key in KEYS:
                ok = client.request(method, path, json=body, headers=bearer(key))
                assert ok.status_code == (404 if path == "/no-such-route" else 200), (path, ok.text)


PREFIX = "/bge"


@pytest.fixture(scope="module")
def prefixed_url(apps) -> str:
    """The service with keys on, under a route prefix, admitting one pending request (`apps`)."""
    return apps + PREFIX


def test_health_needs_no_key_under_a_route_prefix(prefixed_url):
    with httpx.Client(base_url=prefixed_url, timeout=60) as client:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text
        # Only the path under the prefix is public: nothing else that merely ends in /health.
        for path in ["/info", "/health/", "/x/health", "/encode/../health-check"]:
            assert client.get(path).status_code == 401, path
        assert client.get("/info", headers=bearer(KEYS[0])).status_code == 200


def test_health_is_exempt_from_admission_under_a_route_prefix(prefixed_url):
    """With the one pending slot held by a slow upload, other routes get 429 but /health still answers."""
    async def slow_body(release: asyncio.Event):
        yield b'{"texts": ["held '
        await release.wait()
        yield b'upload"]}'

    async def scenario():
        async with httpx.AsyncClient(base_url=prefixed_url, timeout=60, headers=bearer(KEYS[0])) as client:
            upload: dict = {}

            async def slot_held_by_the_upload() -> bool:
                """Start a slow upload unless one is pending (the next poll asks), else send another request:
                True once that one is refused, the upload holding the slot. (An upload that arrived while
                another request held the slot was refused itself: a new one starts.)"""
                if "task" not in upload or upload["task"].done():
                    upload["release"] = asyncio.Event()
                    upload["task"] = asyncio.create_task(client.post("/encode", content=slow_body(upload["release"])))
                    return False
                upload["other"] = await client.post("/encode", json={"texts": ["other"]})
                return upload["other"].status_code == 429

            try:
                held = await wait_until_async(slot_held_by_the_upload, 60, interval=0.1)
                health = await client.get("/health")
            finally:
                upload["release"].set()
            return held, upload["other"], health, await upload["task"]

    held, busy, health, upload = asyncio.run(scenario())
    assert held, busy.text
    assert busy.status_code == 429 and busy.json()["error"]["code"] == "overloaded", busy.text
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    assert upload.status_code == 200 and upload.json()["data"][0]["n_tokens"] > 2, upload.text


def test_openai_client_with_api_key(url):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEYS[1])
    assert len(client.embeddings.create(model="bge-m3", input=["hello"]).data[0].embedding) == 64
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="sk-nope").embeddings.create(model="bge-m3", input="x")


def test_no_request_text_or_key_in_logs_or_errors(url):
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    before = _access_lines(logs)
    with httpx.Client(base_url=url, timeout=60, headers=bearer(KEYS[0])) as client:
        long_canary = " ".join([CANARY] * 40)
        calls = [("/encode", {"texts": [CANARY]}),
                 ("/encode", {"texts": [long_canary], "truncate": False}),  # 413
                 ("/encode", {"texts": [CANARY] * 5}),  # 413: too many
                 ("/encode", {"texts": [CANARY], "dense": "yes"}),  # 422
                 ("/encode", {"texts": [CANARY], "unknown": CANARY}),  # 422
                 ("/v1/embeddings", {"input": [CANARY, 7]}),  # 422
                 ("/score", {"query": CANARY, "passages": []})]  # 422
        for path, body in calls:
            response = client.post(path, json=body)
            if response.status_code != 200:
                assert "zebra-canary" not in response.text, (path, response.text)
        client.post("/encode", json={"texts": [CANARY]}, headers=bearer("sk-" + CANARY.replace(" ", "-")))
    # Scan only once the ingress replica's access log holds every request sent (log files are flushed
    # asynchronously), 30 s at most.
    expected = before + Counter(path for path, _ in calls) + Counter({"/encode": 1})
    assert wait_until(lambda: _access_lines(logs) >= expected, 30), (_access_lines(logs), expected)
    scanned = 0
    for path in logs.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            scanned += 1
            assert b"zebra-canary" not in data, path
            assert not any(key.encode() in data for key in KEYS), path
    assert scanned > 10  # the scan looked at the real log tree (serve/, worker-*.out, ...)


def _access_lines(logs: Path) -> Counter:
    """How many POST access-log lines the ingress replicas have written, per path."""
    text = b"".join(p.read_bytes() for p in (logs / "serve").glob("replica_*Ingress*.log"))
    return Counter(m.decode() for m in re.findall(rb"POST (/[\w/.-]*) \d{3}", text))
