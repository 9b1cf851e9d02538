"""What the offline job tests share: the encoder settings of their jobs, and that encoder loaded directly."""

from __future__ import annotations

import pytest

from serve_app.core.config import EncoderConfig
from serve_app.core.encoder import Encoder


@pytest.fixture(scope="module")
def encoder_config(tiny_model_dir) -> EncoderConfig:
    return EncoderConfig(model=tiny_model_dir, device="cpu", dtype="fp32", max_length=64)


@pytest.fixture(scope="module")
def direct(encoder_config) -> Encoder:
    """The jobs' encoder, in this process: what a job's outputs are compared with."""
    return Encoder(encoder_config)
