"""Find the input files and name their shards (reading them is `readers`)."""

from __future__ import annotations

import glob
import re
from itertools import takewhile
from pathlib import Path
from typing import NamedTuple

FORMATS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".parquet": "parquet", ".csv": "csv"}


class InputFile(NamedTuple):
    """One input file and the name of its shard (its output folders, its manifest entry, its ids' prefix)."""

    path: Path
    shard: str


def _root(path: str) -> Path:
    """What shard names are relative to: a folder itself, a file's folder, or a glob's path up to its first
    wildcard (`corpus/*/*.jsonl` -> `corpus`), so files of the same name in different folders stay apart."""
    if glob.has_magic(path):
        return Path(*takewhile(lambda part: not glob.has_magic(part), Path(path).parts))
    return Path(path) if Path(path).is_dir() else Path(path).parent


def shard_name(path: Path, root: Path) -> str:
    """A filesystem-safe name of an input file from its path relative to `root` (`en/part-0.jsonl` ->
    `en__part-0.jsonl`). Not one-to-one (`en__part-0.jsonl` gets the same name): `find_inputs` refuses
    such pairs rather than change the names of existing outputs."""
    return re.sub(r"[^A-Za-z0-9._-]+", "__", path.relative_to(root).as_posix())


def find_inputs(path: str) -> list[InputFile]:
    """A file, every supported file under a folder, or a glob; sorted, so shard order is stable.

    Raises `ValueError` when two files would share a shard name (compared ignoring case, as macOS and
    Windows file systems do): one would overwrite or hide the other's output.
    """
    candidates = [Path(p) for p in glob.glob(path, recursive=True)] if glob.has_magic(path) else [Path(path)]
    files: list[Path] = []
    for candidate in candidates:
        if candidate.is_dir():
            files += [p for p in candidate.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS]
        elif candidate.is_file():
            if candidate.suffix.lower() not in FORMATS:
                raise ValueError(f"{candidate}: unsupported input format (use {', '.join(sorted(FORMATS))})")
            files.append(candidate)
    if not files:
        raise FileNotFoundError(f"no jsonl, parquet or csv input found at {path!r}")
    root = _root(path)
    inputs = [InputFile(p, shard_name(p, root)) for p in sorted(set(files))]
    seen: dict[str, Path] = {}
    for file in inputs:
        other = seen.setdefault(file.shard.casefold(), file.path)
        if other != file.path:
            raise ValueError(f"inputs {str(other)!r} and {str(file.path)!r} would share the shard name "
                             f"{file.shard!r} (and one's output would be lost); rename one of them or embed "
                             "them into separate outputs")
    return inputs
