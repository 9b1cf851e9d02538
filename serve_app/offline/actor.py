"""What the encoder actors run: the `map_batches` callable (a thin adapter around the encoder core), which
reports the `ModelIdentity` of the encoder it runs with every block, and `resolve_encoder`, which says what
that identity would be where nothing is encoded.

The model side of the core (torch) is imported where it runs, in the actors and the resolving task:
the driver only names these, and importing torch there would add seconds to every job's start.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from ..core.cache import CacheConfig
from ..core.config import EncoderConfig, InputType
from ..core.identity import ModelIdentity
from ..core.inputs import EncodeOptions, token_ids_problem
from ..core.outputs import Embedding
from .arrow import ROW_COLUMNS, embedding_columns

IDENTITY_COLUMN = "identity"  # on every row an actor returns: its encoder's `ModelIdentity`, as JSON


def resolve_encoder(config: EncoderConfig) -> ModelIdentity:
    """The identity an encoder of `config` would have here (its dtype resolved from `auto`), without loading
    it. Run it where the actors run (a Ray task with their resources): the driver may have no GPU, or
    another CPU, and resolve `auto` differently."""
    from ..core.device import dtype_name, resolve_device, resolve_dtype
    from ..core.loading import checkpoint_revision

    dtype = dtype_name(resolve_dtype(config.dtype, resolve_device(config.device)))
    return ModelIdentity.of(config, checkpoint_revision(config.model), dtype)


def block_identities(table: pa.Table) -> list[ModelIdentity]:
    """The identities of the encoders that made `table`'s rows (one per actor call: one, unless blocks merged)."""
    return [ModelIdentity.model_validate_json(value) for value in pc.unique(table.column(IDENTITY_COLUMN)).to_pylist()]


def rows_out(batch: pa.Table, column: str, embeddings: list[Embedding], dim: int, colbert: bool, keep_text: bool,
             identity: pa.Scalar) -> pa.Table:
    """What a `map_batches` encoder returns for `batch`: its rows without an `error`, in order, with
    `embeddings` (one each) and, with `keep_text`, their text (`column`); then its rows with an `error`, with
    null embeddings, for the writer to file; every row with `identity` (the encoder's, as JSON)."""
    has_errors = "error" in batch.column_names and batch.column("error").null_count < batch.num_rows
    good = batch.filter(pc.is_null(batch.column("error"))) if has_errors else batch
    columns = {name: good.column(name) for name in ROW_COLUMNS if name in good.column_names}
    columns.update(embedding_columns(embeddings, dim, colbert))
    if keep_text:
        columns["text"] = good.column(column)
    table = pa.table(columns)
    if has_errors:
        failed = batch.filter(pc.is_valid(batch.column("error")))
        table = pa.concat_tables([table, pa.table(
            [failed.column(f.name) if f.name in ROW_COLUMNS else pa.nulls(failed.num_rows, f.type)
             for f in table.schema], schema=table.schema)])
    return table.append_column(IDENTITY_COLUMN, pa.repeat(identity, table.num_rows))


class EncodeBatch:
    """Actor-pool callable: rows in (`id`, `text` or `token_ids`; `shard`, `row`, `error` when the reader gave
    them), the same rows out with their embeddings (`keep_text`: and their text), and the identity of the
    encoder this actor runs (`IDENTITY_COLUMN`): the driver checks every block against the job's before
    writing it, so vectors of other weights or another dtype (a node with another copy of the checkpoint,
    or another CPU under `dtype: auto`) are never mixed in. A row with an `error` is not encoded: it passes
    through, after the others, with null embeddings, so the writer can file it; so does a row whose token
    ids lie outside this model's vocabulary (the reader cannot know it). With a `cache` (e.g. the Redis the
    online service uses; None: no cache), texts already embedded by this model skip it.
    """

    def __init__(self, encoder_config: EncoderConfig, colbert: bool = False, keep_text: bool = False,
                 cache: CacheConfig | None = None, input_type: InputType | None = None):
        from ..core.cache.cached_encoder import CachingEncoder
        from ..core.encoder import Encoder

        self._encoder = Encoder(encoder_config)
        self._cached = CachingEncoder(self._encoder, cache)
        self._identity = pa.scalar(self._encoder.identity.model_dump_json(), pa.string())
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
        # Keys of the cache are the texts as encoded: an instructed text never takes a plain text's vectors.
        inputs = self._encoder.instructed(good.column(column).to_pylist(), self._input_type)
        embeddings = self._cached.encode(inputs, self._options)
        return rows_out(batch, column, embeddings, self._encoder.dim, self._colbert, self._keep_text, self._identity)

    def _outside_vocabulary(self, batch: pa.Table) -> pa.Table:
        """`batch` with an `error` on each row holding a token id past this model's vocabulary (the reader
        checked every other rule)."""
        ids = batch.column("token_ids").combine_chunks()
        vocab = self._encoder.tokenizer.vocab_size
        # One vectorized pass finds the bad rows; only those are read in Python, for the reason.
        bad = set(pc.filter(pc.list_parent_indices(ids), pc.greater_equal(pc.list_flatten(ids), vocab)).to_pylist())
        if not bad:
            return batch
        errors = batch.column("error").to_pylist()
        for row in bad:
            errors[row] = token_ids_problem(ids[row].as_py(), vocab)
        return batch.set_column(batch.column_names.index("error"), "error", pa.array(errors, pa.string()))
