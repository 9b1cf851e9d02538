"""Typed settings of the online service, one owner per setting.

- `AppArgs`: the builder `args` in serve_config.yaml (what model, what it means, request limits).
- `BatchingConfig`: the model deployment's `user_config`, applied live by `reconfigure()`.
- `ModelAutoscaling`: the `policy_kwargs` of the model deployment's autoscaling policy (`autoscaling`).
- Replicas, resources and the rest of autoscaling live under `deployments:` in serve_config.yaml (defaults:
  `deployments.py`), not here.

Two token budgets, two owners (docs/serving.md, "Two token budgets"): `EncoderConfig.max_forward_tokens` bounds
the padded tokens of one forward pass; `BatchingConfig.max_queue_tokens` bounds the real tokens of one
coalesced queue batch, and so also of one request (413 above it; TEI's `max_batch_tokens` in `/info`).
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..core.cache import CacheConfig
from ..core.config import EncoderConfig, refuse_renamed
from .schemas import Priority

MODEL_ENV_VAR = "BGE_M3_MODEL"


class BatchingConfig(BaseModel):
    """How the model replica coalesces concurrent requests into model batches."""

    model_config = ConfigDict(extra="forbid")

    max_queue_tokens: int = Field(16384, ge=1, description="real (unpadded) tokens per coalesced queue batch, and "
                                  "so per request (413 above it); at least encoder.max_length")
    batch_wait_timeout_s: float = Field(0.002, ge=0, le=1, description="while a batch is already out, wait this "
                                        "long for more requests (a request reaching an idle queue goes at once)")
    max_concurrent_batches: int = Field(2, ge=1, description="batches in flight; 2 overlaps host work with compute")
    # Live (a device's speed is learnt in production: /info's compute.longest_quiet_s), and here beside
    # the batch knobs it bounds. Progress is a finished transformer layer, so the limit covers one layer
    # of one forward pass (at most max_forward_tokens), not a batch. Slowest layer measured: 45.8 s (the
    # full-size model, bf16 emulated on 2 AVX2 cores, a 16,384-token pass; fp32 at 8,192 tokens: 4.4 s;
    # docs/reliability.md). 300 s is ~6.5x that: a false "stalled" kills a working replica under load, a
    # late one only delays replacing a hung one; a GPU host may set far less.
    stall_timeout_s: float = Field(300.0, gt=0, description="health: a compute step that makes no progress (no "
                                   "transformer layer finishes) for this long is a stalled device, and the "
                                   "replica is reported unhealthy; keep it well above /info's "
                                   "compute.longest_quiet_s")

    # The two lanes (`serving.lanes`): bulk work (backfills) on the device's spare time, queries first.
    scheduling: Literal["priority", "fifo"] = Field("priority", description="priority: a formed interactive batch "
                                                    "goes to the device before every waiting bulk batch; fifo: one "
                                                    "queue in arrival order, whatever the priority (the control)")
    bulk_max_queue_tokens: int = Field(2048, ge=1, description="real tokens per bulk batch (a longer bulk request "
                                       "is cut into batches of this size; one text longer runs alone): an "
                                       "interactive request waits behind at most one such batch. Pick what the "
                                       "device computes in a few ms on GPU, ~0.1 s on CPU")
    bulk_quiet_s: float = Field(2.0, ge=0, description="with no interactive request for this long, bulk batches "
                                "grow to max_queue_tokens, so a backfill alone runs at the speed of big batches; the "
                                "first query after the quiet waits behind at most one such batch (0: never grow)")
    bulk_min_share: float = Field(0.1, ge=0, le=1, description="share of the device's recent time bulk batches get "
                                  "when both lanes wait, so a backfill ends under sustained interactive load")
    bulk_max_wait_s: float = Field(10.0, gt=0, description="a bulk request is refused (429, Retry-After) when the "
                                   "work queued ahead of it would take the device longer than this; interactive "
                                   "work is refused only by its own deadline, so bulk is always refused first")

    _renamed = refuse_renamed(max_batch_tokens=(
        "the real-tokens-per-queue-batch budget in user_config is now max_queue_tokens (the padded-tokens-"
        "per-forward-pass budget is args.encoder.max_forward_tokens)"))

    def check_holds(self, max_length: int) -> None:
        """Refuse a queue budget that cannot hold one text of `max_length` tokens: every such request
        would be refused with 413, which is a configuration error, not a client's."""
        if self.max_queue_tokens < max_length:
            raise ValueError(
                f"user_config.max_queue_tokens ({self.max_queue_tokens}) is smaller than encoder.max_length "
                f"({max_length}): a single text of max_length tokens could never be queued; raise "
                f"max_queue_tokens to at least {max_length} or lower max_length")


class ModelAutoscaling(BaseModel):
    """What the model deployment's autoscaling policy keeps each replica near (`serving.autoscaling`).

    The unit is real tokens queued in one replica's batch queue and not yet on its device, averaged over
    `look_back_period_s`: work that arrived faster than the device computes it. An idle replica, or one
    serving one caller at a time, queues none; a saturated one queues what it cannot compute at once.
    Pick about the tokens one replica computes in a few seconds on CPU, about a second on GPU
    (`docs/benchmarks.md`, docs/serving.md "Autoscaling").
    """

    model_config = ConfigDict(extra="forbid")

    target_queued_tokens: int = Field(1024, ge=1, description="real tokens queued (not yet computing) per model "
                                     "replica that autoscaling aims for (more: add replicas; less: remove)")
    bulk_weight: float = Field(1.0, ge=0, description="what a queued bulk token counts for, next to an interactive "
                               "one (1: a backfill scales the deployment up to max_replicas like any load; 0: a "
                               "backfill never adds replicas and runs on spare device time)")


class RequestLimits(BaseModel):
    """Per-request caps the ingress enforces (413 past them) and its deadline (504)."""

    model_config = ConfigDict(extra="forbid")

    max_texts_per_request: int = Field(256, ge=1, description="inputs per request (texts, id lists, /score's "
                                       "passages with the query); past it 413")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="request body size; past it 413, before the "
                                "body is parsed")
    request_timeout_s: float = Field(60.0, gt=0, description="a request's deadline from its arrival at the "
                                     "ingress: past it 504, and its work not yet started is dropped")
    # Longer than request_timeout_s: a backfill's request waits behind every interactive one on the device.
    # Serve's proxy (`http_options.request_timeout_s`, 360 in the shipped configs) must outlast it, or the
    # proxy cuts the request first with its own non-JSON answer.
    bulk_request_timeout_s: float = Field(300.0, gt=0, description="the deadline of a request with priority "
                                          "bulk (as request_timeout_s for interactive ones)")
    health_timeout_s: float = Field(2.0, gt=0, description="how long /health and /info wait for the model "
                                    "deployment's answer")
    max_pending_requests: int = Field(256, ge=1, description="requests one ingress replica holds at once; "
                                      "past it new ones get 429 at once")
    # Bulk requests are held to a share so a flood of them never takes the slots queries need.
    bulk_pending_share: float = Field(0.5, gt=0, le=1, description="the share of max_pending_requests bulk "
                                      "requests may hold at once (at least one); past it a bulk request gets 429 "
                                      "at once, an interactive one is still admitted")
    model_retries: int = Field(2, ge=0, description="re-sends of a model call whose replica died (encoding is "
                               "idempotent), within the request timeout")
    max_requests_per_model_call: int = Field(64, ge=1, description="requests (HTTP or gRPC) the ingress coalesces "
                                             "per call")
    model_calls_in_flight: int = Field(4, ge=1, description="calls from one ingress replica waiting for the model "
                                       "to admit their requests; more requests gather into the next call")
    # Each call costs the model replica ~as much host CPU as a short query's forward pass: requests that arrive
    # evenly spaced (gRPC's multiplexed streams) would otherwise each find a free slot and go alone.
    coalesce_wait_s: float = Field(0.005, ge=0, le=0.1, description="with more of this ingress replica's requests "
                                   "in flight than model_calls_in_flight, a new one waits for the next answer to "
                                   "come back, at most this long, so that those arriving meanwhile go in one call "
                                   "(0: never wait)")


    @property
    def max_pending_bulk(self) -> int:
        """How many bulk requests one ingress replica holds at once: `bulk_pending_share` of
        `max_pending_requests`, at least one."""
        return max(1, int(self.bulk_pending_share * self.max_pending_requests))

    def timeout_s(self, priority: Priority) -> float:
        """The deadline, in seconds from arrival, of a request with this priority."""
        return self.bulk_request_timeout_s if priority == "bulk" else self.request_timeout_s


class AuthConfig(BaseModel):
    """Where the optional API keys come from; the keys themselves never pass through config or logs.

    Keys are read on each ingress replica at start: comma- or newline-separated in the environment
    variable named `api_keys_env`, and/or one per line in `api_keys_file`. None found: auth is off.
    """

    model_config = ConfigDict(extra="forbid")

    api_keys_env: str = Field("BGE_M3_API_KEYS", description="name of the env var holding the keys")
    api_keys_file: str | None = Field(None, description="path of a file with one key per line")


class AppArgs(BaseModel):
    """Arguments of `build_app`; `BGE_M3_MODEL` in the environment overrides `encoder.model`."""

    model_config = ConfigDict(extra="forbid")

    encoder: EncoderConfig = EncoderConfig()
    served_model_name: str = Field("bge-m3", description="the `model` the OpenAI route reports")
    # Off by default: LangChain's OpenAIEmbeddings (check_embedding_ctx_length=True, its default) sends
    # tiktoken's ids as `input`, which BGE-M3 would embed as its own and answer wrong vectors with a 200.
    openai_token_ids: bool = Field(False, description="accept lists of token ids as `input` on /v1/embeddings "
                                   "(BGE-M3's own ids, as /tokenize returns them); off: such an input is a 422 "
                                   "(/encode's token_ids and the TEI routes always take ids)")
    limits: RequestLimits = RequestLimits()
    auth: AuthConfig = AuthConfig()
    cache: CacheConfig = CacheConfig()

    @classmethod
    def parse(cls, args: dict | AppArgs | None) -> AppArgs:
        """A builder's `args`: a dict as Serve passes them from a config's YAML, `AppArgs` from Python, or
        None for every default."""
        return cls.model_validate(args or {})

    @model_validator(mode="before")
    @classmethod
    def _model_from_env(cls, data):
        override = os.environ.get(MODEL_ENV_VAR)
        if override and isinstance(data, dict):
            encoder = dict(data.get("encoder") or {})
            encoder["model"] = override
            data = {**data, "encoder": encoder}
        return data
