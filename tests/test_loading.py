"""Loading a checkpoint at the served weights' size: both layouts the hub's BAAI/bge-m3 and the checkpoint tool
ship (`model.safetensors`, `pytorch_model.bin`) give the weights transformers' own loader gives, bit for bit, in
fp32 and bf16; the encoder on either matches FlagEmbedding; and loading adds about the served weights to a
process's peak memory, not an fp32 copy of the checkpoint besides."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import load_memory
from serve_app.core import weights
from serve_app.core.config import EncoderConfig
from serve_app.core.encoder import Encoder
from serve_app.core.errors import ModelLoadError
from serve_app.core.loading import load_checkpoint
from serve_app.tools.tiny_model import LAYOUTS, build_checkpoint

TEXTS = ["what is BGE-M3", "東京 library museum", "sparse lexical weights for retrieval"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """The small checkpoint in each layout, from one seed: the same weights in two files."""
    return {layout: str(build_checkpoint(tmp_path_factory.mktemp(layout), layout=layout)) for layout in LAYOUTS}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_loads_the_weights_transformers_loads_bit_for_bit(checkpoints, layout, dtype):
    from transformers import AutoModel

    loaded = load_checkpoint(checkpoints[layout], torch.device("cpu"), dtype)
    reference = AutoModel.from_pretrained(checkpoints[layout], dtype=dtype).state_dict()
    ours = loaded.transformer.state_dict()
    assert ours.keys() == reference.keys()
    assert [name for name in ours if ours[name].dtype != dtype or not torch.equal(ours[name], reference[name])] == []
    head = torch.load(f"{checkpoints[layout]}/colbert_linear.pt", weights_only=True)
    assert torch.equal(loaded.colbert_linear.weight, head["weight"].to(dtype))
    # What the buffers hold is computed, not read: the same as a model built the usual way.
    assert torch.equal(loaded.transformer.embeddings.position_ids, torch.arange(ours[
        "embeddings.position_embeddings.weight"].shape[0]).expand((1, -1)))


def test_the_encoder_on_a_pytorch_bin_checkpoint_matches_flagembedding(checkpoints):
    from FlagEmbedding import BGEM3FlagModel

    upstream = BGEM3FlagModel(checkpoints["bin"], use_fp16=False, devices="cpu", normalize_embeddings=True)
    expected = upstream.encode(TEXTS, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    ours = Encoder(EncoderConfig(model=checkpoints["bin"], device="cpu", dtype="fp32")).encode(
        TEXTS, dense=True, sparse=True, colbert=True)
    for i, embedding in enumerate(ours):
        np.testing.assert_allclose(embedding.dense, expected["dense_vecs"][i], atol=1e-5)
        np.testing.assert_allclose(embedding.colbert, expected["colbert_vecs"][i], atol=1e-5)
        assert {int(k): v for k, v in expected["lexical_weights"][i].items()} == pytest.approx(
            dict(zip(embedding.sparse_indices, embedding.sparse_values, strict=True)), abs=1e-5)


def test_a_checkpoint_missing_a_tensor_or_with_a_wrong_shape_is_refused_naming_it_but_the_pooler_is_optional(
        checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    source = Path(checkpoints["safetensors"])
    state = load_file(source / "model.safetensors")
    for file in source.iterdir():  # the config, tokenizer and heads as they are
        if file.name != "model.safetensors":
            shutil.copy(file, tmp_path / file.name)
    save_file({k: v for k, v in state.items() if k != "encoder.layer.1.output.dense.weight"},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"lacks encoder.layer.1.output.dense.weight$"):
        load_checkpoint(str(tmp_path), torch.device("cpu"), torch.float32)
    # The pooler is no part of BGE-M3's outputs: a checkpoint without it loads (as with transformers).
    save_file({k: v for k, v in state.items() if not k.startswith("pooler.")}, str(tmp_path / "model.safetensors"))
    loaded = load_checkpoint(str(tmp_path), torch.device("cpu"), torch.float32)
    assert not loaded.transformer.pooler.dense.weight.any()
    state["encoder.layer.1.output.dense.weight"] = state["encoder.layer.1.output.dense.weight"][:, :3].contiguous()
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"encoder.layer.1.output.dense.weight: the checkpoint's shape"):
        load_checkpoint(str(tmp_path), torch.device("cpu"), torch.float32)


# A checkpoint whose weights dwarf the allocator's noise: ~190 MB in fp32, its word embeddings ~120 MB alone.
MID = {"hidden": 512, "layers": 2, "heads": 8, "vocab_size": 60000, "max_positions": 514}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_loading_in_bf16_adds_the_served_weights_and_one_chunk_to_the_peak(layout, tmp_path):
    """transformers' loader reads the fp32 file whole beside the bf16 model (3x the served weights here);
    ours holds the served weights and at most a chunk of the file at a time."""
    path = build_checkpoint(tmp_path / layout, layout=layout, **MID)
    peak = load_memory.measure("ours", str(path), "bf16")  # in a fresh process, as the benchmark measures
    slack = 40 << 20  # the tokenizer, transformers' lazy imports, the allocator
    assert peak["added_peak_bytes"] <= peak["weights_bytes"] + weights.CHUNK_BYTES + slack, (
        f"{peak['added_peak_bytes'] / 2**20:.0f} MiB added for {peak['weights_bytes'] / 2**20:.0f} MiB of weights")


def test_loading_the_model_imports_neither_scikit_learn_nor_scipy(checkpoints):
    """transformers imports them for assisted generation and detection losses only; on 2 cores that import
    was 1.5-3 s of every model replica's start (docs/benchmarks.md, "Cold start")."""
    script = ("import sys; from serve_app.core.config import EncoderConfig; from serve_app.core.encoder import Encoder;"
              f"Encoder(EncoderConfig(model={checkpoints['safetensors']!r}, device='cpu'));"
              "print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
