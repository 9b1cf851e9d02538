"""Output encodings: quantized dense vectors and base64 bytes of any dtype."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from serve_app.http.serialization import quantize_dense, vector_out


@pytest.fixture
def vector() -> np.ndarray:
    v = np.random.default_rng(0).standard_normal(1024).astype(np.float32)
    return v / np.linalg.norm(v)


def test_int8_and_uint8_keep_the_geometry(vector):
    other = np.random.default_rng(1).standard_normal(1024).astype(np.float32)
    other = 0.5 * vector + other / np.linalg.norm(other)
    for dtype, shift in (("int8", 0.0), ("uint8", 127.5)):
        q = quantize_dense(vector, dtype).astype(np.float32) - shift
        p = quantize_dense(other, dtype).astype(np.float32) - shift
        cos = q @ p / np.linalg.norm(q) / np.linalg.norm(p)
        true = vector @ other / np.linalg.norm(other)
        assert abs(cos - true) < 0.01, dtype
    assert quantize_dense(np.array([1.0, -1.0, 0.0], np.float32), "int8").tolist() == [127, -127, 0]
    assert quantize_dense(np.array([1.0, -1.0, 0.0], np.float32), "uint8").tolist() == [255, 0, 128]


def test_binary_packs_sign_bits(vector):
    bits = np.packbits(vector > 0)
    assert quantize_dense(vector, "ubinary").tolist() == bits.tolist() and len(bits) == 1024 // 8
    assert (quantize_dense(vector, "binary").astype(np.int16) + 128).tolist() == bits.tolist()
    with pytest.raises(ValueError):
        quantize_dense(vector, "int4")


@pytest.mark.parametrize("dtype", ["<f4", "<f2", "i1", "u1"])
def test_base64_is_little_endian_bytes(dtype):
    values = np.arange(6).astype(dtype).reshape(2, 3)
    assert np.frombuffer(base64.b64decode(vector_out(values, "base64")), dtype).tolist() == values.ravel().tolist()
    assert vector_out(values, "float") is values
