"""The tables `settings_doc` writes into the docs, each rendered from the code that owns its values: a pydantic
model's fields (name, type and bounds, default, description), the deployments' default options, the
autoscaling blocks serve_config.yaml writes out, and the offline CLI's flags (its parser, with type and
default from the config field each flag is backed by)."""

from __future__ import annotations

import argparse
import re
import types
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal, TypeGuard, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ..core.config import EncoderConfig
from ..offline import __main__ as cli
from ..offline.job import OfflineJob
from ..serving import deployments

# --- values ----------------------------------------------------------------------------------------------------

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

def is_model(annotation: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _fields(model: type[BaseModel], prefix: str = "", nested: bool = True) -> Iterator[tuple[str, FieldInfo]]:
    """(dotted name, field) of `model`; a field that is itself a model is replaced by its own fields, or
    left out when `nested` is false."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if is_model(annotation):
            if nested:
                yield from _fields(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info


def fields_table(model: type[BaseModel], nested: bool = True, head: str = "setting") -> Callable[[], str]:
    """A table of `model`'s fields: name, type (and bounds), default, description."""
    def render() -> str:
        rows = []
        for name, info in _fields(model, nested=nested):
            kind = _type(info.annotation)
            if bounds := _bounds(info):
                kind += f", {bounds}"
            rows.append([f"`{name}`", kind, _default(info, name), info.description or ""])
        return _table([head, "type", "default", "description"], rows)
    return render


def deployments_table() -> str:
    """The two deployments' default options side by side (`serving/deployments.py`); a Serve config's
    `deployments:` entry overrides any of them by name."""
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
    blocks = [{"name": deployments.MODEL_DEPLOYMENT, "autoscaling_config": deployments.model_autoscaling()},
              {"name": deployments.INGRESS_DEPLOYMENT, "autoscaling_config": deployments.ingress_autoscaling()}]
    return "```yaml\n" + yaml.safe_dump({"deployments": blocks}, sort_keys=False) + "```\n"


def offline_cli_table() -> str:
    """Every flag of `python -m serve_app.offline`, as its parser has them; a flag backed by a field of
    `OfflineJob` or `EncoderConfig` (the module's JOB_FLAGS / ENCODER_FLAGS) takes its type and default
    from that field."""
    backed = {**{f: OfflineJob.model_fields[f] for f in cli.JOB_FLAGS},
              **{f: EncoderConfig.model_fields[f] for f in cli.ENCODER_FLAGS}}
    rows = []
    for action in cli.build_parser()._actions:
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
