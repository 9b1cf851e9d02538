"""The offline job through a running Serve application (`--serve-app NAME`): rows go to the app's model replicas
(`EmbeddingModel`, via a `DeploymentHandle`), with no encoder actor of the job's own and no second copy of the
weights.

`ServeBatch` is the `map_batches` callable, run by a small pool of light actors (a fraction of a CPU, no GPU,
no torch): it returns the same columns as `actor.EncodeBatch`, so `shards.py` and `pipeline.py` file them
as they file the dedicated pool's. Why not `ray.data.llm.ServeDeploymentProcessorConfig`: it is built for
LLM processors, one request per row with a preprocess and a postprocess around it, and a failed request fails
its block. This job needs one request per group of rows (the replica's batching and the bulk lane want
many texts a call), a refused text filed as one error row with its file, line and id while the rest of its
request is sent again, the identity of every answer checked against the job's (a redeploy with other
weights or settings must not mix vectors into an output), and retries on 429-type refusals and dead or
replaced replicas, so a fault costs retries, not rows.

The handle API (`ray.serve`) is imported where it runs, in the actors and in `app_facts`: the driver only
names it.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import pyarrow as pa

from ..core.config import InputType
from ..core.identity import ModelIdentity
from ..core.outputs import Embedding
from ..serving.names import MODEL_DEPLOYMENT
from ..serving.schemas import EncodeRequest
from .actor import rows_out
from .serve_calls import Piece, cut, judge, later, retry_after

CLIENT_CPUS = 0.1  # per actor: it waits on the replicas, it computes nothing
REQUESTS_PER_CALL = 4  # requests sent together in one `encode_many` call
WINDOW_REFRESH_S = 5.0  # how often the RUNNING replicas are counted again (autoscaling adds and removes them)
MAX_WINDOW = 64  # calls in flight per actor at most, whatever the replicas
FACTS_TIMEOUT_S = 60.0

logger = logging.getLogger("serve_app.offline")


def app_facts(app: str) -> dict:
    """The app's model replica's `info()` (`identity`, `fingerprint`, `dim`, `counts`, ...); Ray must be up.
    Raises `ValueError` when no such application or deployment runs."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or MODEL_DEPLOYMENT not in status.deployments:
        running = sorted(serve.status().applications)
        raise ValueError(f"no Serve application {app!r} with a {MODEL_DEPLOYMENT} deployment runs on this Ray "
                         f"cluster (applications: {running or 'none'}); start it first (serve run serve_config.yaml)")
    handle = _threaded_handle(serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=app))
    return handle.info.remote().result(timeout_s=FACTS_TIMEOUT_S)


def _threaded_handle(handle: Any) -> Any:
    """`handle`, its router on a loop of its own: the job calls it from plain threads, never from an event loop.
    Serve's default, but a cluster in Ray's throughput-optimized mode (RAY_SERVE_THROUGHPUT_OPTIMIZED, e.g. with
    HAProxy) turns it off for every process, and then every call would fail ("No event loop running")."""
    if not handle.is_initialized:  # Serve hands out one handle per deployment and process: set it once
        handle._init(_run_router_in_separate_loop=True)
    return handle


def app_identity(app: str) -> tuple[ModelIdentity, int]:
    """The `ModelIdentity` the app's replicas report (what the job's output will be made with), and its `dim`."""
    facts = app_facts(app)
    return ModelIdentity.model_validate(facts["identity"]), int(facts["dim"])


class Window:
    """How many calls one actor keeps in flight: `per_replica` x the deployment's RUNNING replicas, shared by the
    job's `actors` (so every replica's bulk lane stays fed, autoscaled ones included), counted again every
    `WINDOW_REFRESH_S`."""

    def __init__(self, app: str, per_replica: int, actors: int):
        self.app, self.per_replica, self.actors = app, per_replica, actors
        self._size, self._read_at = per_replica, -math.inf

    def size(self) -> int:
        """Calls this actor may have in flight now."""
        now = time.monotonic()
        if now - self._read_at >= WINDOW_REFRESH_S:
            self._read_at = now
            from ray import serve

            try:
                deployment = serve.status().applications[self.app].deployments[MODEL_DEPLOYMENT]
                running = int(deployment.replica_states.get("RUNNING", 0))
            except Exception:  # the controller busy, or the app redeploying: keep the last count
                return self._size
            share = math.ceil(self.per_replica * max(running, 1) / self.actors)
            self._size = max(1, min(share, MAX_WINDOW))
        return self._size


class IdentityChangedError(RuntimeError):
    """An answer came from a replica of another model identity than the job's (the app was redeployed)."""


class ServeBatch:
    """Actor-pool callable: rows in (as `EncodeBatch` takes them), the same rows out with the embeddings the app's
    replicas computed, and the job's identity (`IDENTITY_COLUMN`), which every answer was checked against."""

    def __init__(self, app: str, identity: ModelIdentity, dim: int, colbert: bool = False, keep_text: bool = False,
                 input_type: InputType | None = None, timeout_s: float = 600.0, in_flight_per_replica: int = 2,
                 actors: int = 1):
        from ray import serve

        self._app, self._identity, self._dim = app, identity, dim
        self._fingerprint = identity.fingerprint()
        self._scalar = pa.scalar(identity.model_dump_json(), pa.string())
        self._colbert, self._keep_text, self._input_type, self._timeout_s = colbert, keep_text, input_type, timeout_s
        self._handle = _threaded_handle(serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=app))
        self._window = Window(app, in_flight_per_replica, actors)
        self._calls = ThreadPoolExecutor(MAX_WINDOW, thread_name_prefix="serve-call")

    def __call__(self, batch: pa.Table) -> pa.Table:
        column = "token_ids" if "token_ids" in batch.column_names else "text"
        inputs = batch.column(column).to_pylist()
        errors = batch.column("error").to_pylist() if "error" in batch.column_names else [None] * batch.num_rows
        embedded: dict[int, Embedding] = {}
        refused = self._encode([row for row, error in enumerate(errors) if error is None], inputs, embedded)
        for row, reason in refused.items():
            errors[row] = reason
        if refused:  # the service's refusals join the readers' errors: the writer files them alike
            error_column = pa.array(errors, pa.string())
            batch = (batch.set_column(batch.column_names.index("error"), "error", error_column)
                     if "error" in batch.column_names else batch.append_column("error", error_column))
        good = [embedded[row] for row, error in enumerate(errors) if error is None]
        return rows_out(batch, column, good, self._dim, self._colbert, self._keep_text, self._scalar)

    def _encode(self, rows: list[int], inputs: list, embedded: dict[int, Embedding]) -> dict[int, str]:
        """Embed `rows` into `embedded` through the app, keeping the window of calls in flight; the rows the
        service refused, with why."""
        todo, refused = cut(rows, inputs), {}
        flying: dict[Future, list[Piece]] = {}
        while todo or flying:
            now = time.monotonic()
            ready = [p for p in todo if p.ready_at <= now]
            while ready and len(flying) < self._window.size():
                group, ready = ready[:REQUESTS_PER_CALL], ready[REQUESTS_PER_CALL:]
                todo = [p for p in todo if p not in group]
                flying[self._calls.submit(self._call, [self._request(p, inputs) for p in group])] = group
            pause = max(0.01, min(min((p.ready_at for p in todo), default=now + 1.0) - now, 1.0))
            if not flying:  # all waiting out a Retry-After (`wait` returns at once on no futures)
                time.sleep(pause)
                continue
            done, _ = wait(flying, timeout=pause, return_when=FIRST_COMPLETED)
            for future in done:
                group, now = flying.pop(future), time.monotonic()
                try:
                    answers = future.result()
                except Exception as exc:  # the whole call failed (a dead replica, back-pressure): all go again
                    if retry_after(exc) is None:  # not a failure a retry cures: stop now, not after give_up_s
                        raise
                    logger.warning("a call to %r failed (%s: %s); its %d requests go again", self._app,
                                   type(exc).__name__, exc, len(group))
                    todo += [later(p, exc, now, self._timeout_s) for p in group]
                    continue
                for piece, answer in zip(group, answers, strict=True):
                    self._check_identity(answer)
                    verdict = judge(piece, answer, now, self._timeout_s)
                    embedded.update(verdict.embedded)
                    refused.update(verdict.errors)
                    todo += verdict.resend
        return refused

    def _request(self, piece: Piece, inputs: list) -> EncodeRequest:
        """The request of `piece`'s rows: every output the job writes, on the bulk lane, with the job's timeout."""
        values = [inputs[row] for row in piece.rows]
        source = {"texts": values} if isinstance(values[0], str) else {"token_ids": values}
        return EncodeRequest(**source, dense=True, sparse=True, colbert=self._colbert, input_type=self._input_type,
                             priority="bulk", timeout_s=self._timeout_s)

    def _call(self, requests: list[EncodeRequest]) -> list:
        """One `encode_many` call (on a thread of the window): each request's result or failure, in order. The
        wait is bounded: a call past its requests' timeout is given up, and its rows sent again."""
        response = self._handle.encode_many.remote(requests)
        try:
            return response.result(timeout_s=self._timeout_s + FACTS_TIMEOUT_S)
        except TimeoutError:
            response.cancel()
            raise

    def _check_identity(self, answer: object) -> None:
        """Stop the job when `answer` comes from a replica of another identity: its vectors must not be mixed in."""
        fingerprint = getattr(answer, "identity", None)
        if fingerprint is None or fingerprint == self._fingerprint:
            return
        try:  # name the new identity when a replica tells it (best effort: the old ones may still answer)
            facts = app_facts(self._app)
            other = facts["identity"] if facts["fingerprint"] == fingerprint else f"fingerprint {fingerprint}"
        except Exception:
            other = f"fingerprint {fingerprint}"
        raise IdentityChangedError(
            f"the Serve application {self._app!r} now answers with model identity {other} where this job runs "
            f"{self._identity.model_dump()} (fingerprint {self._fingerprint}): it was redeployed with another "
            "model or settings mid-job. The shards finished so far are kept; run the job again once the app runs "
            "the job's identity, or into another output (or --overwrite) with the new one")
