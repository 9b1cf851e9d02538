"""Input files the offline tests write, and how they read a job's output back."""

from __future__ import annotations

import json
from pathlib import Path

from serve_app.core.config import EncoderConfig
from serve_app.offline.pipeline import read_output


def write_jsonl(path: Path, rows: list) -> None:
    """One line per row: a dict as JSON, a string as it is (a line that is not JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))


def two_files(root: Path) -> Path:
    """`root/in` with two JSONL files of three texts each (shards `part0.jsonl`, `part1.jsonl`)."""
    corpus = root / "in"
    for f in range(2):
        write_jsonl(corpus / f"part{f}.jsonl", [{"text": f"file {f} row {i}"} for i in range(3)])
    return corpus


def rows_by_id(output: str | Path, kind: str = "data") -> dict[str, dict]:
    """A finished job's rows (`data` or `errors`) by id; fails on a repeated id."""
    rows = read_output(str(output), kind).to_pylist()
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == len(rows), "an id appears twice"
    return by_id


def encoder_flags(config: EncoderConfig) -> list[str]:
    """The CLI flags that give a job `config`'s model and the settings its vectors depend on."""
    return ["--model", config.model, "--device", config.device, "--dtype", config.dtype,
            "--max-length", str(config.max_length)]


def manifest(output: str | Path) -> dict:
    """A job output's `_manifest.json`."""
    return json.loads((Path(output) / "_manifest.json").read_text())

