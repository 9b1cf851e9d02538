"""The package's layers: `core` runs without Ray or a web framework, `gateway` without a web framework, and
imports only go downward (core <- serving <- gateway <- http, grpc <- app/ingress; core <- serving <- offline)."""

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
    "gateway": {"core", "serving"},  # transport-neutral: what every transport calls
    "http": {"core", "serving", "gateway"},
    "grpc": {"core", "serving", "gateway"},  # a transport beside http, never importing it
    "offline": {"core", "serving"},  # a client of the serving layer's handle API with --serve-app
    # Development tools at the top: the docs' tables read every layer; nothing in the package imports them.
    "tools": {"core", "serving", "gateway", "http", "grpc", "offline"},
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
    code = ("import sys, serve_app.ingress; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'FlagEmbedding'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_the_offline_driver_and_its_serve_app_actors_do_not_load_the_model_stack():
    """With --serve-app the replicas hold the model: the job's driver (the CLI, the pipeline) and its light
    `via_serve` actors must not pay for importing torch (seconds per process)."""
    code = ("import sys, serve_app.offline.__main__, serve_app.offline.via_serve; print(sorted({m.split('.')[0] "
            "for m in sys.modules} & {'torch', 'transformers', 'FlagEmbedding'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_every_layer_is_listed():
    """A new folder must say where it stands, else its imports would go unchecked."""
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(ALLOWED)


def test_the_gateway_imports_no_web_framework_and_no_model_stack():
    """Transport-neutral: a gRPC servicer uses it without FastAPI (Ray Serve itself loads Starlette, so this
    reads the gateway's own imports); an ingress replica never runs the model."""
    wrong = {"fastapi", "starlette", "uvicorn", "torch", "transformers", "FlagEmbedding"}
    found = []
    for path in sorted((PACKAGE / "gateway").rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level}
        found += [f"{path.name} imports {n}" for n in names if n.split(".")[0] in wrong]
    assert not found, found
    code = ("import sys, serve_app.gateway.service, serve_app.gateway.access; print(sorted({m.split('.')[0] for m "
            "in sys.modules} & {'torch', 'transformers', 'FlagEmbedding'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_the_request_flow_of_the_model_replica_needs_no_ray():
    """`serving.flow` runs and is tested without Serve: the queue, load and stats are handed to it."""
    code = "import sys, serve_app.serving.flow; print('ray' in {m.split('.')[0] for m in sys.modules})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", out
