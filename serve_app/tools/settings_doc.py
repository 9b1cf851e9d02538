"""Write the docs' settings and CLI tables from the typed configs, so a default is written once: in code.

    python -m serve_app.tools.settings_doc            # rewrite the tables in README.md and docs/*.md
    python -m serve_app.tools.settings_doc --check    # exit 1, naming them, if any table is stale
    python -m serve_app.tools.settings_doc --undescribed   # fields that have no description in code

A doc holds a table between two marker lines; everything between them is this module's output:

    <!-- settings:args.limits -->
    ...
    <!-- /settings -->

`SECTIONS` names each table and what it is rendered from: the pydantic models' fields (name, type and
bounds, default, description), the deployments' default options, the autoscaling blocks serve_config.yaml
writes out, and the offline CLI's flags (its argparse parser, with type and default from the config field
each flag is backed by). `tests/test_docs.py` fails when a table differs from what this renders.

The sources are named, not imported at the top: this is a leaf that reads every layer (nothing imports it),
while `tools/` sits at the bottom of the package's layers (`tests/test_layers.py`).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypeGuard, Union, get_args, get_origin
from unittest import mock

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = "python -m serve_app.tools.settings_doc"
MARKER = re.compile(r"(?P<open><!-- settings:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(?P<close><!-- /settings -->)",
                    re.S)


def docs(root: Path = ROOT) -> list[Path]:
    """The files that may hold tables: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _load(path: str) -> Any:
    """`module:attribute` -> the object."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


# --- values --------------------------------------------------------------------------------------------------

def _type(annotation: Any) -> str:
    """A field's type as a reader of the YAML or JSON sees it: `int`, `str | null`, `auto | fp32 | ...`,
    `list[list[int]]`."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _type(get_args(annotation)[0])
    if origin is Literal:
        return " | ".join(str(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(dict.fromkeys(_type(a) for a in get_args(annotation)))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type(a) for a in get_args(annotation))}]"
    if annotation is type(None):
        return "null"
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


_BOUNDS = ((annotated_types.Ge, "ge", ">="), (annotated_types.Gt, "gt", ">"), (annotated_types.Le, "le", "<="),
           (annotated_types.Lt, "lt", "<"))


def _bounds(info: FieldInfo) -> str:
    """The field's numeric bounds, e.g. `>= 1, <= 8192`."""
    found = []
    for item in info.metadata:
        for kind, attribute, sign in _BOUNDS:
            if isinstance(item, kind):
                found.append(f"{sign} {_scalar(getattr(item, attribute))}")
    return ", ".join(found)


def _scalar(value: Any, none: str = "null") -> str:
    """A value as YAML writes it: `null`, `true`, `0.002`, `300` (a float without a fraction, as YAML's)."""
    if value is None:
        return none
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if value == value and abs(value) < 1e15 else repr(value)
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).strip()
    return str(value)


def _default(info: FieldInfo, name: str, none: str = "null") -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "required"
    value = info.get_default(call_default_factory=True)
    text = f"`{_scalar(value, none)}`" if value is not None or none == "null" else none
    if name.endswith("bytes") and isinstance(value, int) and value >= 1024 and value % 1024 == 0:
        text += f" ({_size(value)})"
    return text


def _size(n: int) -> str:
    for unit in ("KiB", "MiB", "GiB"):
        n //= 1024
        if n < 1024 or n % 1024:
            return f"{n} {unit}"
    return f"{n} GiB"


def _cell(text: str) -> str:
    """Text fit for a markdown table cell: one line, pipes escaped, and outside code spans no `<` that would
    open an HTML tag (`<file>` would vanish)."""
    parts = " ".join(text.split()).replace("|", "\\|").split("`")
    parts[::2] = [re.sub(r"<(?=[A-Za-z/!])", "&lt;", part) for part in parts[::2]]
    return "`".join(parts)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --- the tables ----------------------------------------------------------------------------------------------

def _is_model(annotation: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _fields(model: type[BaseModel], prefix: str = "", nested: bool = True) -> Iterator[tuple[str, FieldInfo]]:
    """(dotted name, field) of `model`; a field that is itself a model is replaced by its own fields, or
    left out when `nested` is false."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if _is_model(annotation):
            if nested:
                yield from _fields(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info


def fields_table(model_path: str, nested: bool = True, head: str = "setting") -> Callable[[], str]:
    """A table of `model_path`'s fields: name, type (and bounds), default, description."""
    def render() -> str:
        rows = []
        for name, info in _fields(_load(model_path), nested=nested):
            kind = _type(info.annotation)
            if bounds := _bounds(info):
                kind += f", {bounds}"
            rows.append([f"`{name}`", kind, _default(info, name), info.description or ""])
        return _table([head, "type", "default", "description"], rows)
    return render


def deployments_table() -> str:
    """The two deployments' default options side by side (`serving/deployments.py`); a Serve config's
    `deployments:` entry overrides any of them by name."""
    deployments = importlib.import_module("serve_app.serving.deployments")
    model, ingress = deployments.model_deployment_options(), deployments.ingress_deployment_options()
    options: list[str] = []
    for opts in (model, ingress):
        for key, option in opts.items():
            keys = [f"{key}.{k}" for k in option] if key == "ray_actor_options" else [key]
            options += [k for k in keys if k != "name" and k not in options]

    def value(opts: dict, key: str) -> str:
        if key == "user_config" and key in opts:
            return "`BatchingConfig` defaults (the `user_config` table)"
        head, _, tail = key.partition(".")
        found = opts.get(head, {}).get(tail) if tail else opts.get(head)
        return "Serve's default" if found is None else f"`{_scalar(found)}`"

    rows = [[f"`{key}`", value(model, key), value(ingress, key)] for key in options]
    return _table(["option", f"`{model['name']}`", f"`{ingress['name']}`"], rows)


def autoscaling_blocks() -> str:
    """The `autoscaling_config` blocks the shipped configs write out, at their defaults."""
    deployments = importlib.import_module("serve_app.serving.deployments")
    blocks = [{"name": deployments.MODEL_DEPLOYMENT, "autoscaling_config": deployments.model_autoscaling()},
              {"name": deployments.INGRESS_DEPLOYMENT, "autoscaling_config": deployments.ingress_autoscaling()}]
    return "```yaml\n" + yaml.safe_dump({"deployments": blocks}, sort_keys=False) + "```\n"


def offline_parser() -> argparse.ArgumentParser:
    """The offline CLI's parser: `build_parser()` when its module has one; else the parser `parse_args`
    builds, caught at its `parse_args` call (nothing is parsed or run)."""
    main = importlib.import_module("serve_app.offline.__main__")
    if hasattr(main, "build_parser"):
        return main.build_parser()

    class Built(Exception):
        pass

    def catch(parser, *args, **kwargs):
        raise Built(parser)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", catch):
        try:
            main.parse_args([])
        except Built as built:
            return built.args[0]
    raise RuntimeError("serve_app.offline.__main__.parse_args built no parser")


def offline_cli_table() -> str:
    """Every flag of `python -m serve_app.offline`, as its parser has them; a flag backed by a field of
    `OfflineJob` or `EncoderConfig` (the module's JOB_FLAGS / ENCODER_FLAGS) takes its type and default
    from that field."""
    main = importlib.import_module("serve_app.offline.__main__")
    backed = {**{f: main.OfflineJob.model_fields[f] for f in main.JOB_FLAGS},
              **{f: main.EncoderConfig.model_fields[f] for f in main.ENCODER_FLAGS}}
    rows = []
    for action in offline_parser()._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        flag = " / ".join(f"`{s}`" for s in action.option_strings)
        info = backed.get(action.dest)
        if isinstance(action, (argparse._StoreTrueAction,)):
            kind, default = "switch", "off"
        elif info is not None:
            kind = _type(info.annotation).replace(" | null", "")
            if bounds := _bounds(info):
                kind += f", {bounds}"
            default = _default(info, action.dest, none="—")
        else:
            kind = getattr(action.type, "__name__", "str")
            default = "required" if action.required else _scalar(action.default, "—")
        description = re.sub(r" \(default: [^()]*\)$", "", action.help or "")
        rows.append([flag, kind, default, description])
    return _table(["flag", "value", "default", "description"], rows)


SECTIONS: dict[str, Callable[[], str]] = {
    "args": fields_table("serve_app.serving.config:AppArgs", nested=False),
    "args.encoder": fields_table("serve_app.core.config:EncoderConfig"),
    "args.limits": fields_table("serve_app.serving.config:RequestLimits"),
    "args.cache": fields_table("serve_app.core.cache.store:CacheConfig"),
    "args.auth": fields_table("serve_app.serving.config:AuthConfig"),
    "user_config": fields_table("serve_app.serving.config:BatchingConfig"),
    "policy_kwargs": fields_table("serve_app.serving.config:ModelAutoscaling"),
    "deployments": deployments_table,
    "deployments.autoscaling": autoscaling_blocks,
    "offline.cli": offline_cli_table,
    # The HTTP request bodies (docs/http-api.md); a field whose type is a model is its own table.
    "http.openai": fields_table("serve_app.http.protocol:OpenAIEmbeddingRequest", nested=False, head="field"),
    "http.encode": fields_table("serve_app.http.protocol:EncodeBody", nested=False, head="field"),
    "http.score": fields_table("serve_app.http.protocol:ScoreBody", nested=False, head="field"),
    "http.score.weights": fields_table("serve_app.http.protocol:ScoreWeightsBody", head="field"),
    "http.tei.embed": fields_table("serve_app.http.protocol:TeiEmbedRequest", head="field"),
    "http.tei.tokenize": fields_table("serve_app.http.protocol:TeiTokenizeRequest", head="field"),
    "http.tei.decode": fields_table("serve_app.http.protocol:TeiDecodeRequest", head="field"),
}
# The models rendered above, for `undescribed`.
MODELS = ["serve_app.serving.config:AppArgs", "serve_app.core.config:EncoderConfig",
          "serve_app.serving.config:RequestLimits", "serve_app.core.cache.store:CacheConfig",
          "serve_app.serving.config:AuthConfig", "serve_app.serving.config:BatchingConfig",
          "serve_app.serving.config:ModelAutoscaling", "serve_app.offline.__main__:OfflineJob",
          *(f"serve_app.http.protocol:{name}" for name in ("OpenAIEmbeddingRequest", "EncodeBody", "ScoreBody",
                                                           "ScoreWeightsBody", "TeiEmbedRequest",
                                                           "TeiTokenizeRequest", "TeiDecodeRequest"))]


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
    for model_path in MODELS:
        model = _load(model_path)
        for name, info in model.model_fields.items():
            if not info.description and not _is_model(info.annotation):
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
