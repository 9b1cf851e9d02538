"""Write the docs' settings and CLI tables from the typed configs, so a default is written once: in code.

    python -m serve_app.tools.settings_doc            # rewrite the tables in README.md and docs/*.md
    python -m serve_app.tools.settings_doc --check    # exit 1, naming them, if any table is stale
    python -m serve_app.tools.settings_doc --undescribed   # fields that have no description in code

A doc holds a table between two marker lines; everything between them is this module's output:

    <!-- settings:args.limits -->
    ...
    <!-- /settings -->

`SECTIONS` names each table and what it is rendered from (`doc_tables`). `tests/test_docs.py` fails when a
table differs from what this renders.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from ..core.cache.store import CacheConfig
from ..core.config import EncoderConfig
from ..http import protocol
from ..offline.job import OfflineJob
from ..serving.config import AppArgs, AuthConfig, BatchingConfig, ModelAutoscaling, RequestLimits
from .doc_tables import autoscaling_blocks, deployments_table, fields_table, is_model, offline_cli_table

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = "python -m serve_app.tools.settings_doc"
MARKER = re.compile(r"(?P<open><!-- settings:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(?P<close><!-- /settings -->)",
                    re.S)


def docs(root: Path = ROOT) -> list[Path]:
    """The files that may hold tables: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


SECTIONS: dict[str, Callable[[], str]] = {
    "args": fields_table(AppArgs, nested=False),
    "args.encoder": fields_table(EncoderConfig),
    "args.limits": fields_table(RequestLimits),
    "args.cache": fields_table(CacheConfig),
    "args.auth": fields_table(AuthConfig),
    "user_config": fields_table(BatchingConfig),
    "policy_kwargs": fields_table(ModelAutoscaling),
    "deployments": deployments_table,
    "deployments.autoscaling": autoscaling_blocks,
    "offline.cli": offline_cli_table,
    # The HTTP request bodies (docs/http-api.md); a field whose type is a model is its own table.
    "http.openai": fields_table(protocol.OpenAIEmbeddingRequest, nested=False, head="field"),
    "http.encode": fields_table(protocol.EncodeBody, nested=False, head="field"),
    "http.score": fields_table(protocol.ScoreBody, nested=False, head="field"),
    "http.score.weights": fields_table(protocol.ScoreWeightsBody, head="field"),
    "http.tei.embed": fields_table(protocol.TeiEmbedRequest, head="field"),
    "http.tei.tokenize": fields_table(protocol.TeiTokenizeRequest, head="field"),
    "http.tei.decode": fields_table(protocol.TeiDecodeRequest, head="field"),
}
# The models rendered above, for `undescribed`.
MODELS: list[type[BaseModel]] = [
    AppArgs, EncoderConfig, RequestLimits, CacheConfig, AuthConfig, BatchingConfig, ModelAutoscaling, OfflineJob,
    protocol.OpenAIEmbeddingRequest, protocol.EncodeBody, protocol.ScoreBody, protocol.ScoreWeightsBody,
    protocol.TeiEmbedRequest, protocol.TeiTokenizeRequest, protocol.TeiDecodeRequest]


# --- the docs ------------------------------------------------------------------------------------------------

def render(text: str, cache: dict[str, str] | None = None) -> str:
    """`text` with every table between markers rendered afresh; an unknown table name is an error."""
    cache = {} if cache is None else cache

    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in SECTIONS:
            raise KeyError(f"unknown settings table {name!r}; known: {', '.join(SECTIONS)}")
        if name not in cache:
            cache[name] = SECTIONS[name]()
        return match["open"] + cache[name] + match["close"]

    return MARKER.sub(fill, text)


def stale(root: Path = ROOT) -> dict[Path, list[str]]:
    """The docs whose tables differ from what the code says, with the names of those tables."""
    cache: dict[str, str] = {}
    found = {}
    for path in docs(root):
        text = path.read_text()
        if render(text, cache) != text:
            current = {m["name"]: m["body"] for m in MARKER.finditer(text)}
            found[path] = [name for name, body in current.items() if cache[name] != body]
    return found


def write(root: Path = ROOT) -> list[Path]:
    """Rewrite the stale docs; returns them."""
    cache: dict[str, str] = {}
    changed = []
    for path in docs(root):
        text = path.read_text()
        new = render(text, cache)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


def undescribed() -> list[str]:
    """`Model.field` for each rendered field without a description in code."""
    missing = []
    for model in MODELS:
        for name, info in model.model_fields.items():
            if not info.description and not is_model(info.annotation):
                missing.append(f"{model.__name__}.{name}")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=GENERATOR, description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is stale")
    parser.add_argument("--undescribed", action="store_true", help="list the fields without a description")
    args = parser.parse_args(argv)
    if args.undescribed:
        print("\n".join(undescribed()))
        return 0
    if args.check:
        found = stale()
        for path, names in found.items():
            print(f"{path.relative_to(ROOT)}: stale tables {', '.join(names)}; run {GENERATOR}")
        return 1 if found else 0
    for path in write():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
