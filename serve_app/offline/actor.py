"""What the encoder actors run: the `map_batches` callable (a thin adapter around the encoder core),
which reports the checkpoint revision and dtype it runs with every block, and `resolve_encoder`, which
says what they would be where nothing is encoded.

The model side of the core (torch) is imported where it runs, in the actors and the resolving task:
the driver only names these, and importing torch there would add seconds to every job's start.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from ..core.cache import CacheConfig
from ..core.config import EncoderConfig, InputType
from ..core.inputs import EncodeOptions
from .arrow import ROW_COLUMNS, embedding_columns

RESOLVED_COLUMNS = ("revision", "dtype")  # what the actor runs, on every row it returns (as `resolve_encoder`)


def resolve_encoder(config: EncoderConfig) -> dict:
    """The checkpoint `revision` and `dtype` (fp32/fp16/bf16, `auto` resolved) an encoder with `config`
    would use here, without loading it. Run it where the actors run (a Ray task with their resources): the
    driver may have no GPU, or another CPU, and resolve `auto` differently."""
    from ..core.device import dtype_name, resolve_device, resolve_dtype
    from ..core.loading import checkpoint_revision

    return {"revision": checkpoint_revision(config.model),
            "dtype": dtype_name(resolve_dtype(config.dtype, resolve_device(config.device)))}


class EncodeBatch:
    """Actor-pool callable: rows in (`id`, `text` or `token_ids`; `shard`, `row`, `error` when the reader gave
    them), the same rows out with their embeddings (`keep_text`: and their text), and the `revision` and `dtype` this
    actor runs (`RESOLVED_COLUMNS`): the driver checks every block against the job's identity before writing
    it, so vectors of other weights or another dtype (a node with another copy of the checkpoint, or
    another CPU under `dtype: auto`) are never mixed in. A row with an `error` is not encoded: it passes
    through, after the others, with null embeddings, so the writer can file it; so does a row whose token
    ids lie outside this model's vocabulary (the reader cannot know it). With a `cache` (e.g. the Redis the
    online service uses), texts already embedded by this model skip it.
    """

    def __init__(self, encoder_config: EncoderConfig, colbert: bool = False, keep_text: bool = False,
                 cache: CacheConfig | None = None, input_type: InputType | None = None):
        from ..core.cache.cached_encoder import CachingEncoder
        from ..core.encoder import Encoder

        self._encoder = Encoder(encoder_config)
        self._cached = CachingEncoder(self._encoder, cache)
        self._resolved = {"revision": self._encoder.revision, "dtype": self._encoder.describe()["dtype"]}
        self._colbert = colbert
        self._options = EncodeOptions(dense=True, sparse=True, colbert=colbert)
        self._keep_text = keep_text
        self._input_type = input_type

    def __call__(self, batch: pa.Table) -> pa.Table:
        column = "token_ids" if "token_ids" in batch.column_names else "text"
        if column == "token_ids":
            batch = self._outside_vocabulary(batch)
        has_errors = "error" in batch.column_names and batch.column("error").null_count < batch.num_rows
        good = batch.filter(pc.is_null(batch.column("error"))) if has_errors else batch
        texts = good.column(column)
        # Keys of the cache are the texts as encoded: an instructed text never takes a plain text's vectors.
        inputs = self._encoder.instructed(texts.to_pylist(), self._input_type)
        embeddings = self._cached.encode(inputs, self._options)
        columns = {name: good.column(name) for name in ROW_COLUMNS if name in good.column_names}
        columns.update(embedding_columns(embeddings, self._encoder.dim, self._colbert))
        if self._keep_text:
            columns["text"] = texts
        table = pa.table(columns)
        if has_errors:
            failed = batch.filter(pc.is_valid(batch.column("error")))
            table = pa.concat_tables([table, pa.table(
                [failed.column(f.name) if f.name in ROW_COLUMNS else pa.nulls(failed.num_rows, f.type)
                 for f in table.schema], schema=table.schema)])
        for name in RESOLVED_COLUMNS:
            table = table.append_column(name, pa.array([self._resolved[name]] * table.num_rows, pa.string()))
        return table


    def _outside_vocabulary(self, batch: pa.Table) -> pa.Table:
        """`batch` with an `error` on each row holding a token id past this model's vocabulary."""
        ids = batch.column("token_ids").combine_chunks()
        vocab = self._encoder.tokenizer.vocab_size
        bad = set(pc.filter(pc.list_parent_indices(ids), pc.greater_equal(pc.list_flatten(ids), vocab)).to_pylist())
        if not bad:
            return batch
        errors = batch.column("error").to_pylist()
        for row in bad:
            seq = ids[row].as_py()
            position = next(i for i, t in enumerate(seq) if t >= vocab)
            errors[row] = f"token ids[{position}] is {seq[position]}, outside the vocabulary [0, {vocab})"
        return batch.set_column(batch.column_names.index("error"), "error", pa.array(errors, pa.string()))


def resolution(table: pa.Table) -> dict:
    """The `revision` and `dtype` of the actor that encoded `table` (one actor call: the same on every row)."""
    return {name: table.column(name)[0].as_py() for name in RESOLVED_COLUMNS}
