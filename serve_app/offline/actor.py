"""What the encoder actors run: the `map_batches` callable (a thin adapter around the encoder core),
and the resolution of the checkpoint revision and dtype they will use.

The model side of the core (torch) is imported where it runs, in the actors and the resolving task:
the driver only names these, and importing torch there would add seconds to every job's start.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import ray

from ..core.cache import CacheConfig
from ..core.config import EncoderConfig
from ..core.errors import ModelLoadError
from ..core.outputs import EncodeOptions
from .arrow import ROW_COLUMNS, embedding_columns


def resolve_encoder(config: EncoderConfig) -> dict:
    """The checkpoint `revision` and `dtype` (fp32/fp16/bf16, `auto` resolved) an encoder with `config`
    would use here. Run it where the actors run (a Ray task with their resources): the driver may have
    no GPU, or another CPU, and resolve `auto` differently."""
    from ..core.device import dtype_name, resolve_device, resolve_dtype
    from ..core.loading import checkpoint_revision

    return {"revision": checkpoint_revision(config.model),
            "dtype": dtype_name(resolve_dtype(config.dtype, resolve_device(config.device)))}


class EncodeBatch:
    """Actor-pool callable: rows in (`id`, `text`; `shard`, `row`, `error` when the reader gave them), the
    same rows out with their embeddings (`keep_text`: and their text). A row with an `error` is not
    encoded: it passes through, after the others, with null embeddings, so the writer can file it.

    Given a `revision`, refuses to start on other weights (a node with another copy of the checkpoint):
    its vectors would be mixed with the others'. Given a `resolution` instead (a reference to what
    `resolve_encoder` answers, possibly still running), takes the revision and the dtype from it once the
    model code is imported. With a `cache` (e.g. the Redis the online service uses), texts already
    embedded by this model skip it.
    """

    def __init__(self, encoder_config: EncoderConfig, colbert: bool = False, keep_text: bool = False,
                 revision: str | None = None, cache: CacheConfig | None = None,
                 resolution: ray.ObjectRef | None = None):
        from ..core.cache.cached_encoder import CachingEncoder
        from ..core.encoder import Encoder

        if resolution is not None:
            resolved = ray.get(resolution)
            encoder_config = encoder_config.model_copy(update={"dtype": resolved["dtype"]})
            revision = resolved["revision"]
        self._encoder = Encoder(encoder_config)
        self._cached = CachingEncoder(self._encoder, cache or CacheConfig(backend="off"))
        if revision is not None and self._encoder.revision != revision:
            raise ModelLoadError(f"checkpoint {encoder_config.model!r} is revision {self._encoder.revision} on this "
                                 f"node but {revision} where the job resolved it: every node must load the same "
                                 "weights")
        self._colbert = colbert
        self._options = EncodeOptions(dense=True, sparse=True, colbert=colbert)
        self._keep_text = keep_text

    def __call__(self, batch: pa.Table) -> pa.Table:
        has_errors = "error" in batch.column_names and batch.column("error").null_count < batch.num_rows
        good = batch.filter(pc.is_null(batch.column("error"))) if has_errors else batch
        texts = good.column("text")
        embeddings = self._cached.encode(texts.to_pylist(), self._options)
        columns = {name: good.column(name) for name in ROW_COLUMNS if name in good.column_names}
        columns.update(embedding_columns(embeddings, self._encoder.dim, self._colbert))
        if self._keep_text:
            columns["text"] = texts
        table = pa.table(columns)
        if not has_errors:
            return table
        failed = batch.filter(pc.is_valid(batch.column("error")))
        return pa.concat_tables([table, pa.table(
            [failed.column(f.name) if f.name in ROW_COLUMNS else pa.nulls(failed.num_rows, f.type)
             for f in table.schema], schema=table.schema)])
