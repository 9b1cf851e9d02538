"""What one offline run is: its typed settings (`OfflineJob`), the identity of its output, and what it did
(`Summary`).

The identity is what a resumed run must match: the `ModelIdentity` of the encoder (weights, resolved dtype,
max_length, normalization, instructions) and the job's own output-shaping fields. It is written into the
output's manifest (`manifest.py`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..core.cache import CacheConfig
from ..core.config import EncoderConfig, InputType, Instructions
from ..core.identity import ModelIdentity

LEGACY_KEYS = {"model_revision": "revision"}  # names of identity keys in manifests written before ModelIdentity


class OfflineJob(BaseModel):
    """Everything one offline run needs; also what a resumed run must match."""

    model_config = ConfigDict(extra="forbid")

    input: str
    output: str
    encoder: EncoderConfig = EncoderConfig()
    text_field: str = "text"
    ids_field: str | None = Field(None, description="instead of text_field: the field holding each row's token ids "
                                  "(a JSON array or parquet list of integers, as `/tokenize` returns them: special "
                                  "tokens included; no instruction is added)")
    id_field: str | None = None
    input_type: InputType | None = Field(None, description="query or passage: encode every text after the "
                                         "encoder's instruction for that side (encoder.instructions)")
    colbert: bool = False
    concurrency: int = Field(1, ge=1, description="encoder actors (with --serve-app: the light actors that call the "
                             "app's replicas)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; fractional shares a GPU")
    num_cpus: float | None = Field(None, gt=0, description="CPUs per actor (torch runs a thread per CPU); default: "
                                   "1 with a GPU, else the largest node's CPUs shared by the actors")
    batch_bytes: int = Field(2 << 20, ge=1024, description="input bytes per encoder call (texts and ids, as Arrow): "
                             "about the same tokens per call whatever the texts' length; more packs texts by "
                             "length better and holds more memory (with --colbert: ~4 KiB of vectors per token)")
    batch_size: int | None = Field(None, ge=1, description="rows per encoder call instead of --batch-bytes")
    overwrite: bool = False
    max_shards: int | None = Field(None, ge=1, description="stop after this many new shards (partial runs)")
    address: str | None = Field(None, description="Ray cluster address; default: RAY_ADDRESS, else a Ray of the job's "
                                "own (with --serve-app: the running one, auto)")
    milvus_uri: str | None = Field(None, description="also upsert into Milvus: a Milvus Lite `.db` file or "
                                                     "http://host:19530")
    milvus_collection: str = Field("bge_m3", description="Milvus collection, created when missing")
    cache: CacheConfig | None = Field(None, description="embedding cache the actors consult and fill, e.g. the "
                                      "online service's Redis; None: no cache")
    serve_app: str | None = Field(None, description="encode through the model replicas of this running Serve "
                                  "application (e.g. bge-m3) instead of encoder actors of the job's own; the "
                                  "model and its settings are the app's")
    bulk_timeout_s: float = Field(600.0, gt=0, description="with --serve-app: each request's timeout on the model "
                                  "replica (bulk lane); one past it is sent again")
    in_flight_per_replica: int = Field(2, ge=1, description="with --serve-app: calls in flight per RUNNING model "
                                       "replica (re-read as replicas come and go), shared by the job's actors")

    @model_validator(mode="after")
    def _ids_have_no_text(self) -> OfflineJob:
        if self.ids_field is not None and self.milvus_uri is not None:
            raise ValueError("milvus_uri: the Milvus sink stores each row's text, and ids_field rows have none")
        return self

    @model_validator(mode="after")
    def _app_settings_are_the_apps(self) -> OfflineJob:
        """With `serve_app`, the app's replicas encode with the app's model and settings: a setting that would
        choose another model, or size encoder actors the job no longer starts, is refused rather than ignored."""
        if self.serve_app is None:
            return self
        chosen = [f"--{name.replace('_', '-')}" for name in sorted(self.encoder.model_fields_set - {"instructions"})]
        chosen += [f"--{side}-instruction" for side in ("query", "passage") if getattr(self.encoder.instructions, side)]
        chosen += [f"--{name.replace('_', '-')}" for name in ("num_gpus", "num_cpus") if name in self.model_fields_set]
        chosen += ["--cache-redis-url"] if self.cache is not None else []
        if chosen:
            raise ValueError(
                f"{', '.join(chosen)} cannot be given with --serve-app {self.serve_app}: its model replicas encode "
                "with the application's own settings. Set them in its serve config instead: args.encoder (model, "
                "device, dtype, max_length, max_forward_tokens, num_threads, instructions), args.cache (the "
                "embedding cache), and the EmbeddingModel deployment's ray_actor_options (CPUs, GPUs)")
        return self

    def identity(self, model: ModelIdentity) -> dict:
        """What makes the output what it is, as the manifest records it; a resumed run must match it.

        The fields of `model`, with only the instruction of this job's `input_type` kept (the other side's,
        or both without an input type, change no vector here, so configuring them never blocks a resume),
        and the fields that shape the output: which outputs are written and from which input fields. Not
        the device, threads, batching or concurrency. With Milvus on, the parquet also holds the text (the
        sink's source), so that is part of it; where the rows go is not: a run into another URI or
        collection upserts the finished shards there too.
        """
        side = self.input_type
        used = {side: getattr(model.instructions, side) or None} if side is not None else {}  # "" puts nothing
        identity = {**model.model_copy(update={"instructions": Instructions(**used)}).model_dump(),
                    "colbert": self.colbert, "text_field": self.text_field, "id_field": self.id_field}
        if self.ids_field is not None:  # only then: outputs written before token-id input stay resumable
            identity["ids_field"] = self.ids_field
        return {**identity, "text": True} if self.milvus_uri else identity

    def upgraded(self, recorded: dict) -> dict:
        """`recorded` (a manifest's job identity) in today's format. Manifests written before `ModelIdentity`
        name the revision `model_revision` and hold the instruction used as `instruction` (only when there
        was one): read as this job's side of `instructions`, which is what it meant."""
        if "instructions" in recorded:
            return recorded
        upgraded = {LEGACY_KEYS.get(key, key): value for key, value in recorded.items() if key != "instruction"}
        side = self.input_type or "query"  # without an input type no instruction is this job's: refused either way
        instruction = recorded.get("instruction")
        upgraded["instructions"] = Instructions(**({side: instruction} if instruction else {})).model_dump()
        return upgraded


class Summary(BaseModel):
    """What a run did (this run only for rows/tokens/errors/wall time; shards counted overall)."""

    rows: int = 0
    tokens: int = 0
    errors: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    shards_pending: int = 0
    wall_s: float = 0.0
    milvus_rows: int | None = None  # rows upserted into Milvus by this run; None without Milvus

    @property
    def rows_per_s(self) -> float:
        """Embedded rows per second of wall time."""
        return self.rows / self.wall_s if self.wall_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Tokens of embedded rows per second of wall time."""
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def line(self) -> str:
        """One human line for the CLI."""
        return (f"rows={self.rows} tokens={self.tokens} errors={self.errors} wall={self.wall_s:.1f}s "
                f"rows/s={self.rows_per_s:.1f} tokens/s={self.tokens_per_s:.0f} "
                f"shards: done={self.shards_done} skipped={self.shards_skipped} "
                f"pending={self.shards_pending}" + ("" if self.milvus_rows is None else f" milvus={self.milvus_rows}"))
