"""The package's layers: `core` runs without Ray or a web framework, and imports only go downward
(core <- serving <- http <- app; core <- offline)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import serve_app

PACKAGE = Path(serve_app.__file__).parent

# What each layer may import from this package (besides itself).
ALLOWED = {
    "core": set(),
    "serving": {"core"},
    "http": {"core", "serving"},
    "offline": {"core"},
    "tools": set(),
}


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "serve_app" else None


def _imports(path: Path) -> set[str]:
    """Absolute names of the `serve_app` modules `path` imports."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            names.add(base)
    return {n for n in names if n.startswith("serve_app")}


def test_imports_only_go_downward():
    wrong = []
    for layer, allowed in ALLOWED.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for name in _imports(path):
                target = _layer_of(name)
                if target not in (layer, *allowed) and name != "serve_app":
                    wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_core_imports_neither_ray_nor_a_web_framework():
    # A fresh interpreter: this test process already has Ray loaded.
    code = ("import sys, serve_app.core.encoder, serve_app.core.cache.cached_encoder, serve_app.core.scoring; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'fastapi', 'starlette', 'uvicorn'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_http_layer_does_not_load_the_model_stack():
    # Ingress replicas never run the model: importing the HTTP layer must not pull torch or transformers.
    code = ("import sys, serve_app.http.ingress; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'FlagEmbedding'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
