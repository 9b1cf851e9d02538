"""`_manifest.json`: what job wrote an output folder, and which of its shards are complete."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

MANIFEST = "_manifest.json"


def recorded_shards(out: Path) -> set[str]:
    """The shards an earlier run recorded as complete in `out` (none without a manifest), read before the job's
    identity is known: `Manifest` then refuses the folder if it belongs to another job."""
    path = out / MANIFEST
    return set(json.loads(path.read_text())["shards"]) if path.exists() else set()


def refuse_other_job(out: Path, recorded: dict, identity: dict, unknown: Iterable[str] = ()) -> None:
    """Raise `ValueError` if the job `recorded` in `out` differs from `identity` in a key not in `unknown`
    (what is not known yet: a run checks what it can before any work, the rest once resolved)."""
    skip = set(unknown)
    differences = "; ".join(f"{key}: {recorded.get(key)!r} there, {identity.get(key)!r} now"
                            for key in sorted((recorded.keys() | identity.keys()) - skip)
                            if recorded.get(key) != identity.get(key))
    if differences:
        raise ValueError(f"{out} holds output of a different job ({differences}); use --overwrite or another "
                         "output directory")


def recorded_job(out: Path) -> dict | None:
    """The identity of the job that wrote `out` (None: no manifest)."""
    path = out / MANIFEST
    return json.loads(path.read_text())["job"] if path.exists() else None


class Manifest:
    """`_manifest.json`: the job identity and the completed shards with their counts."""

    def __init__(self, out: Path, identity: dict):
        self.path = out / MANIFEST
        state = json.loads(self.path.read_text()) if self.path.exists() else {"job": identity, "shards": {}}
        refuse_other_job(out, state["job"], identity)
        self.state = state

    def done(self, shard: str) -> bool:
        """Whether the shard's output is complete."""
        return shard in self.state["shards"]

    def counts(self, shard: str) -> dict:
        """What a complete shard holds (rows, tokens, errors; `milvus`: where it was upserted, how many rows)."""
        return self.state["shards"][shard]

    def mark_done(self, shard: str, counts: dict) -> None:
        """Record a complete shard (atomically: write a temp file, then rename)."""
        self.state["shards"][shard] = counts
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1, sort_keys=True))
        tmp.replace(self.path)
