"""A checkpoint's tensors copied into a model already built in its serving dtype and on its device, tensor by
tensor and in bounded chunks, so loading never holds the checkpoint whole.

`transformers`' loader reads a `pytorch_model.bin` whole in fp32 and casts afterwards: for BGE-M3 in bf16,
3.2x the served weights at peak. Here the peak is the served weights plus one chunk (`CHUNK_BYTES`). Both
layouts the hub's `BAAI/bge-m3` and the checkpoint tool ship:

- `model.safetensors`: each tensor's bytes read with plain file reads at the offsets its header gives, one
  chunk at a time into one reused buffer (the file stays in the page cache, never in this process's memory);
- `pytorch_model.bin` (PyTorch's zip): mapped with `torch.load(mmap=True)`; each chunk's pages are released
  once copied (`madvise(MADV_DONTNEED)`: the mapping is read-only in use, so the file is their only copy).

A model on a GPU receives each chunk straight from the host buffer: the host holds one chunk, not the weights.
"""

from __future__ import annotations

import ctypes
import json
import logging
import mmap
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .errors import ModelLoadError

logger = logging.getLogger("serve_app.core")
CHUNK_BYTES = 64 << 20  # one chunk of a tensor in flight: the loader's memory beyond the served weights
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # first found wins, as transformers prefers
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}
_MADV_DONTNEED = 4
_PAGE = mmap.PAGESIZE


def weights_file(path: Path) -> Path:
    """The checkpoint's weights file; `ModelLoadError` naming both layouts when neither is there (sharded
    checkpoints are not a BGE-M3 layout)."""
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise ModelLoadError(f"checkpoint {str(path)!r} has neither {' nor '.join(WEIGHT_FILES)}")


def load_into(module: torch.nn.Module, file: Path, *, optional: tuple[str, ...] = ()) -> None:
    """Copy every tensor of `module.state_dict()` from `file`, cast to the module's dtype on its device. A
    checkpoint key may carry the model's `base_model_prefix` (`roberta.`); keys the module lacks are ignored
    (as transformers does); a tensor the module needs and the file lacks is `ModelLoadError`, unless its name
    starts with one of `optional` (then zeroed), and so is a shape that differs."""
    targets = module.state_dict()
    prefix = getattr(module, "base_model_prefix", "")
    seen: set[str] = set()
    for key, copy_to in _tensors(file):
        name = key[len(prefix) + 1:] if prefix and key.startswith(prefix + ".") else key
        if name in targets:
            copy_to(targets[name])
            seen.add(name)
    missing = [name for name in targets if name not in seen]
    if required := [name for name in missing if not name.startswith(optional)]:
        more = f" (and {len(required) - 1} more)" if len(required) > 1 else ""
        raise ModelLoadError(f"{file.name} lacks {required[0]}{more}")
    for name in missing:
        targets[name].zero_()


def _tensors(file: Path) -> Iterator[tuple[str, Callable[[torch.Tensor], None]]]:
    """Each tensor's name and a function that copies it into a given tensor, chunk by chunk."""
    if file.suffix == ".safetensors":
        yield from _safetensors(file)
    else:
        yield from _torch_zip(file)


def _safetensors(file: Path) -> Iterator[tuple[str, Callable[[torch.Tensor], None]]]:
    with file.open("rb", buffering=0) as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        start = 8 + size
        largest = max((entry["data_offsets"][1] - entry["data_offsets"][0] for entry in header.values()), default=0)
        buffer = bytearray(min(CHUNK_BYTES, largest))  # zero-filled, so resident: no larger than needed

        for key, entry in header.items():
            dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
            if dtype is None:
                raise ModelLoadError(f"{file.name}: {key} has dtype {entry['dtype']}, which this loader does not read")
            shape, begin = list(entry["shape"]), entry["data_offsets"][0]

            def copy_to(target: torch.Tensor, shape=shape, begin=begin, dtype=dtype, key=key) -> None:
                _check_shape(key, shape, target)
                flat = target.view(-1)
                for first, n in _spans(flat.numel(), dtype.itemsize):
                    view = memoryview(buffer)[: n * dtype.itemsize]
                    f.seek(start + begin + first * dtype.itemsize)
                    if f.readinto(view) != len(view):
                        raise ModelLoadError(f"{file.name} ends inside {key}")
                    flat[first: first + n].copy_(torch.frombuffer(view, dtype=dtype))

            yield key, copy_to


def _torch_zip(file: Path) -> Iterator[tuple[str, Callable[[torch.Tensor], None]]]:
    try:
        state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:  # PyTorch's pre-1.6 format cannot be mapped: read whole (the old cost, still correct)
        logger.warning("%s is in PyTorch's legacy format: read whole, not mapped", file.name)
        state = _read_whole(file)
    except Exception as exc:
        raise ModelLoadError(f"could not read {file.name}: {type(exc).__name__}: {exc}") from exc
    for key in list(state):
        source = state.pop(key)  # dropped once copied: nothing keeps the mapping's pages

        def copy_to(target: torch.Tensor, source=source, key=key) -> None:
            _check_shape(key, list(source.shape), target)
            flat, whole = target.view(-1), source.reshape(-1)  # a view of the mapping (a strided tensor is copied)
            for first, n in _spans(whole.numel(), source.element_size()):
                part = whole[first: first + n]
                flat[first: first + n].copy_(part)
                _release(part)

        yield key, copy_to


def _read_whole(file: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"could not read {file.name}: {type(exc).__name__}: {exc}") from exc


def _spans(numel: int, itemsize: int) -> Iterator[tuple[int, int]]:
    """(first element, count) of each chunk of a flat tensor of `numel` elements, `CHUNK_BYTES` at most."""
    step = max(1, CHUNK_BYTES // itemsize)
    for first in range(0, numel, step):
        yield first, min(step, numel - first)


def _check_shape(key: str, shape: list[int], target: torch.Tensor) -> None:
    if list(target.shape) != shape:
        raise ModelLoadError(f"{key}: the checkpoint's shape {shape} is not the model's {list(target.shape)}")


def _release(part: torch.Tensor) -> None:
    """Drop the mapped file pages under `part` from this process (they are clean: read from the file and
    never written), so a mapped checkpoint does not stay resident as it is read."""
    if not part.is_contiguous() or _LIBC is None:
        return
    start = part.data_ptr()
    end = start + part.numel() * part.element_size()
    first, last = -(-start // _PAGE) * _PAGE, end // _PAGE * _PAGE  # whole pages inside the range only
    if last > first:
        _LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        return libc
    except (OSError, AttributeError):  # not Linux-like: the pages stay mapped until the mapping is dropped
        return None


_LIBC = _libc()
