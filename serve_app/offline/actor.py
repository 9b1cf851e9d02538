"""What the encoder actors run: the `map_batches` callable (a thin adapter around the encoder core),
and the resolution of the checkpoint revision and dtype they will use."""

from __future__ import annotations

import pyarrow as pa

from ..core.cache import CacheConfig
from ..core.cache.cached_encoder import CachingEncoder
from ..core.config import EncoderConfig
from ..core.device import dtype_name, resolve_device, resolve_dtype
from ..core.encoder import Encoder
from ..core.errors import ModelLoadError
from ..core.loading import checkpoint_revision
from ..core.outputs import EncodeOptions
from .arrow import embeddings_to_arrow


def resolve_encoder(config: EncoderConfig) -> dict:
    """The checkpoint `revision` and `dtype` (fp32/fp16/bf16, `auto` resolved) an encoder with `config`
    would use here. Run it where the actors run (a Ray task with their resources): the driver may have
    no GPU, or another CPU, and resolve `auto` differently."""
    return {"revision": checkpoint_revision(config.model),
            "dtype": dtype_name(resolve_dtype(config.dtype, resolve_device(config.device)))}


class EncodeBatch:
    """Actor-pool callable: a table of `id`, `text` in, one embedding row per text out (`keep_text`: with its text).

    Given a `revision`, refuses to start on other weights (a node with another copy of the checkpoint):
    its vectors would be mixed with the others'. With a `cache` (e.g. the Redis the online service uses),
    texts already embedded by this model skip it.
    """

    def __init__(self, encoder_config: EncoderConfig, colbert: bool = False, keep_text: bool = False,
                 revision: str | None = None, cache: CacheConfig | None = None):
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
        texts = batch.column("text").to_pylist()
        embeddings = self._cached.encode(texts, self._options)
        return embeddings_to_arrow(batch.column("id").to_pylist(), embeddings, self._encoder.dim, self._colbert,
                                   texts if self._keep_text else None)
