"""`_manifest.json`: what job wrote an output folder, and which of its shards are complete.

The job is recorded as its identity (`OfflineJob.identity`); a run into a folder that holds another job's
output is refused (`refuse_other_job`) unless it overwrites it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
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
    recorded, identity = _flat(recorded), _flat(identity)
    differences = "; ".join(f"{key}: {recorded.get(key)!r} there, {identity.get(key)!r} now"
                            for key in sorted((recorded.keys() | identity.keys()) - skip)
                            if recorded.get(key) != identity.get(key))
    if differences:
        raise ValueError(f"{out} holds output of a different job ({differences}); use --overwrite or another "
                         "output directory")


def _flat(identity: dict) -> dict:
    """`identity` with its nested fields (`instructions`) named `field.key`: a difference names what differs."""
    flat = {}
    for key, value in identity.items():
        flat.update({f"{key}.{sub}": item for sub, item in value.items()} if isinstance(value, dict) else {key: value})
    return flat


def recorded_job(out: Path) -> dict | None:
    """The identity of the job that wrote `out`, as written (None: no manifest)."""
    path = out / MANIFEST
    return json.loads(path.read_text())["job"] if path.exists() else None


def _as_written(recorded: dict) -> dict:
    return recorded


class Manifest:
    """`_manifest.json`: the job identity and the completed shards with their counts.

    `upgrade` reads an identity recorded by an earlier version in today's format (`OfflineJob.upgraded`);
    once it matches, the manifest is rewritten with today's at its next write.
    """

    def __init__(self, out: Path, identity: dict, upgrade: Callable[[dict], dict] = _as_written):
        self.path = out / MANIFEST
        state = json.loads(self.path.read_text()) if self.path.exists() else {"job": identity, "shards": {}}
        refuse_other_job(out, upgrade(state["job"]), identity)
        self.state = {**state, "job": identity}

    def counts(self, shard: str) -> dict:
        """What a complete shard holds (rows, tokens, errors; `milvus`: where it was upserted, how many rows)."""
        return self.state["shards"][shard]

    def mark_done(self, shard: str, counts: dict) -> None:
        """Record a complete shard (atomically: write a temp file, then rename)."""
        self.state["shards"][shard] = counts
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1, sort_keys=True))
        tmp.replace(self.path)
