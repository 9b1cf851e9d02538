"""The docs stay true to the code: their generated tables equal what the typed configs say, every relative
link and anchor resolves, and every `serve_app` module and repository path they name exists.

The tables are written by `python -m serve_app.tools.settings_doc` (see its docstring); this test only
compares. A module renamed in code fails here with the doc and the name to update.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from collections import Counter
from functools import cache
from pathlib import Path

from serve_app.tools import settings_doc

ROOT = Path(__file__).resolve().parents[1]
DOCS = settings_doc.docs(ROOT)
FENCE = re.compile(r"^( {0,3})(```|~~~).*?^\1\2[^\S\n]*$", re.S | re.M)
# Where a bare or partial path (`model.py`, `serving/admission.py`) may live.
SOURCE_DIRS = ("serve_app", "tests", "bench", "examples")


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_generated_tables_are_what_the_code_says():
    stale = settings_doc.stale(ROOT)
    assert not stale, (
        "tables that differ from the code: "
        + "; ".join(f"{_name(path)}: {', '.join(names)}" for path, names in stale.items())
        + f". Run `{settings_doc.GENERATOR}` and commit the result.")


def test_every_table_has_one_home():
    found: Counter[str] = Counter()
    unclosed = []
    for path in DOCS:
        text = path.read_text()
        names = [m["name"] for m in settings_doc.MARKER.finditer(text)]
        found.update(names)
        opened, closed = (len(re.findall(f"^{marker}", text, re.M)) for marker in ("<!-- settings:", "<!-- /settings"))
        if opened != len(names) or closed != len(names):
            unclosed.append(_name(path))
    assert not unclosed, f"a settings marker without its pair in {unclosed}"
    assert set(found) == set(settings_doc.SECTIONS), (
        f"missing tables: {sorted(set(settings_doc.SECTIONS) - set(found))}; "
        f"unknown tables: {sorted(set(found) - set(settings_doc.SECTIONS))}")
    twice = [name for name, n in found.items() if n > 1]
    assert not twice, f"tables in more than one place (one home each): {twice}"


# --- links -------------------------------------------------------------------------------------------------

def _prose(text: str) -> str:
    """`text` without its fenced code blocks (a link there is code, not a link)."""
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (`_` and `-` kept), spaces to `-`."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    seen: Counter[str] = Counter()
    for match in re.finditer(r"^#{1,6} +(.+?) *#*$", _prose(path.read_text()), re.M):
        slug = _slug(match[1])
        anchors.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return anchors


def test_relative_links_and_anchors_resolve():
    broken = []
    for path in DOCS:
        prose = _prose(path.read_text())
        for target in re.findall(r"\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)", prose):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            if not resolved.exists():
                broken.append(f"{_name(path)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{_name(path)}: {target} (no heading '#{anchor}' in {_name(resolved)})")
    assert not broken, "broken links:\n" + "\n".join(broken)


# --- names of modules and files -------------------------------------------------------------------------------

MODULE = re.compile(r"(?<![\w./-])serve_app(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?")
PY_PATH = re.compile(r"(?<![\w./:-])[\w./-]*\w\.py\b")
REPO_PATH = re.compile(r"(?<![\w./:-])(?:(?:serve_app|tests|bench|examples|configs|deploy|docs|\.ci)/[\w./-]*\w"
                       r"\.(?:yaml|yml|json|jsonl|md|png|txt|sh|toml)|serve_config\.yaml|pyproject\.toml|"
                       r"constraints\.txt|install\.sh)\b")


@cache
def _top_level_names(file: Path) -> frozenset[str]:
    """The names a module defines or imports at its top level (what `module.name` can refer to)."""
    names = set()
    for node in ast.parse(file.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return frozenset(names)


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for file in (base.with_suffix(".py"), base / "__init__.py"):
        if file.is_file():
            return file
    return None


def _module_missing(name: str) -> str | None:
    """Why `serve_app.a.b[.attr][:attr]` does not exist, or None when it does."""
    dotted, _, attribute = name.partition(":")
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):  # the longest prefix that is a module; the rest, a name in it
        file = _module_file(parts[:end])
        if file is None:
            continue
        rest = parts[end:] + ([attribute] if attribute else [])
        if not rest or rest[0] in _top_level_names(file):
            return None
        return f"{'.'.join(parts[:end])} has no {rest[0]}"
    return "no such module"


@cache
def _sources() -> tuple[str, ...]:
    return tuple(str(p.relative_to(ROOT)) for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py"))


def _installed(name: str) -> bool:
    """Whether `name` is a file of an installed package or module (`ray/actor.py`, `dataclasses.py`: where a
    profile in docs/benchmarks.md says the time went)."""
    top = name.split("/")[0].removesuffix(".py")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    if spec is None or spec.origin is None:
        return False
    if name == f"{top}.py":
        return True
    return bool(spec.submodule_search_locations) and (Path(spec.origin).parent.parent / name).exists()


def _path_exists(name: str) -> bool:
    """A path from the repository root or from `serve_app/`, the tail of a source file's path (a doc may say
    `serving/admission.py` or `model.py` where the package is clear), or an installed package's file."""
    if (ROOT / name).exists() or (ROOT / "serve_app" / name).exists():
        return True
    return name.endswith(".py") and (any(s == name or s.endswith("/" + name) for s in _sources())
                                     or _installed(name))


def test_the_modules_and_files_the_docs_name_exist():
    missing = []
    for path in DOCS:
        text = path.read_text()
        for name in sorted(set(MODULE.findall(text))):
            if why := _module_missing(name):
                missing.append(f"{_name(path)}: {name} ({why})")
        for name in sorted(set(PY_PATH.findall(text)) | set(REPO_PATH.findall(text))):
            if not _path_exists(name):
                missing.append(f"{_name(path)}: {name} (no such file)")
    assert not missing, ("names in the docs that the code does not have (after a rename, update the doc):\n"
                         + "\n".join(missing))
