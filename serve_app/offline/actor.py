"""The Ray Data `map_batches` callable: a thin adapter around the encoder core."""

from __future__ import annotations

import pyarrow as pa

from ..config import EncoderConfig
from ..encoder import Encoder
from ..serialization import embeddings_to_arrow


class EncodeBatch:
    """Actor-pool callable: a table of `id`, `text` in, one embedding row per text out (`keep_text`: with its text)."""

    def __init__(self, encoder_config: EncoderConfig, colbert: bool = False, keep_text: bool = False):
        self._encoder = Encoder(encoder_config)
        self._colbert = colbert
        self._keep_text = keep_text

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("text").to_pylist()
        embeddings = self._encoder.encode(texts, dense=True, sparse=True, colbert=self._colbert)
        return embeddings_to_arrow(batch.column("id").to_pylist(), embeddings, self._encoder.dim, self._colbert,
                                   texts if self._keep_text else None)
