"""Locate a BGE-M3 checkpoint (hub id or local directory) and load it as FlagEmbedding does.

The transformer and both heads are the modules upstream's `EncoderOnlyEmbedderM3Runner.get_model` builds
(`AutoModel` of the checkpoint's config, then `colbert_linear` hidden -> hidden and `sparse_linear` hidden -> 1
from their `.pt` files), without importing FlagEmbedding: its import alone took ~6 s of every replica's
start, more than loading the weights. The modules are built empty in the serving dtype on the serving
device and the weights copied in chunk by chunk (`weights`): loading costs the served weights' size, not
an fp32 copy of the checkpoint beside them. `tests/test_encoder.py` holds the outputs equal to
`BGEM3FlagModel`'s. Unlike upstream we refuse a checkpoint without its heads: FlagEmbedding would silently
initialise random heads and serve wrong sparse and ColBERT vectors.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import MissingHeadsError, ModelLoadError
from .weights import load_into, weights_file

HEAD_FILES = ("colbert_linear.pt", "sparse_linear.pt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    """The transformer, both heads and the tokenizer of one checkpoint, ready for inference."""

    transformer: torch.nn.Module
    colbert_linear: torch.nn.Module
    sparse_linear: torch.nn.Module
    tokenizer: Any
    path: Path
    revision: str


def resolve_checkpoint(model: str) -> Path:
    """Return a local directory for `model`: the directory itself, or a hub snapshot of the id."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"model path {model!r} is a file, not a checkpoint directory")
    if not _HUB_ID.match(model):
        raise ModelLoadError(f"model directory {model!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=model, ignore_patterns=["flax_model.msgpack", "rust_model.ot",
                                                                        "tf_model.h5", "onnx/*"]))
    except Exception as exc:  # any hub failure means the same thing to the user: not loadable
        raise ModelLoadError(f"could not download {model!r} from the model hub: {type(exc).__name__}: {exc}") from exc


def _revision(path: Path) -> str:
    """A short identity of the weights, for caches and /info: the hub snapshot hash, else a hash of every
    file's name, size and mtime (replacing any weight, head or tokenizer file changes it)."""
    if path.parent.name == "snapshots":
        return path.name[:12]
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return f"local-{digest.hexdigest()[:12]}"


def _skip_training_imports() -> None:
    """Tell transformers that scikit-learn and SciPy are absent, before its generation and loss modules
    (imported with every model and `AutoTokenizer`) look. It uses them only for assisted generation and
    the losses of object-detection models, which an encoder never runs, and importing them was 1.5-3 s of a
    model replica's start on 2 cores (docs/benchmarks.md, "Cold start"): more than loading the small
    checkpoint. A no-op once those modules are loaded, or if a transformers release renames the flags."""
    import sys

    if "transformers.generation.candidate_generator" in sys.modules:
        return
    import transformers.utils.import_utils as import_utils

    for flag in ("_sklearn_available", "_scipy_available"):
        if hasattr(import_utils, flag):
            setattr(import_utils, flag, False)


def load_checkpoint(model: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Load transformer, heads and tokenizer of `model` onto `device` in `dtype`, in eval mode."""
    path = resolve_checkpoint(model)
    missing = [name for name in HEAD_FILES if not (path / name).is_file()]
    if missing:
        raise MissingHeadsError(
            f"checkpoint {str(path)!r} lacks {', '.join(missing)}: BGE-M3 needs both heads for sparse and "
            "ColBERT outputs (FlagEmbedding would silently use random ones)"
        )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    weights = weights_file(path)
    try:
        _skip_training_imports()
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.modeling_utils import no_init_weights

        tokenizer = AutoTokenizer.from_pretrained(str(path))
        config = AutoConfig.from_pretrained(str(path))
        hidden = int(config.hidden_size)
        with no_init_weights(), torch.device(device):  # allocated where they serve, in dtype; never initialised
            transformer = AutoModel.from_config(config, dtype=dtype)
            colbert_linear = torch.nn.Linear(hidden, hidden, dtype=dtype)
            sparse_linear = torch.nn.Linear(hidden, 1, dtype=dtype)
        # The pooler is not part of BGE-M3 (its dense output is the [CLS] hidden state): a checkpoint without it
        # loads, as with transformers.
        load_into(transformer, weights, optional=("pooler.",))
        for head, name in ((colbert_linear, "colbert_linear.pt"), (sparse_linear, "sparse_linear.pt")):
            load_into(head, path / name)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not load checkpoint {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    for module in (transformer, colbert_linear, sparse_linear):
        module.eval().requires_grad_(False)
    return LoadedModel(transformer, colbert_linear, sparse_linear, tokenizer=tokenizer, path=path,
                       revision=_revision(path))


def checkpoint_revision(model: str) -> str:
    """The revision `load_checkpoint(model, ...)` reports, without loading the weights."""
    return _revision(resolve_checkpoint(model))
