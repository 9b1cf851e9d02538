"""Command-line flags backed by the typed configs, so each default is written once: in the config.

A flag defaults to None (not given), its help names the config field's default, and only the flags
given on the command line are passed to the config, which fills in the rest.
"""

from __future__ import annotations

import argparse

from pydantic import BaseModel


def config_flag(parser: argparse.ArgumentParser, model: type[BaseModel], field: str, **kwargs) -> None:
    """Add `--field-name` for `model.field`: default None; help: its description and its default."""
    info = model.model_fields[field]
    help_text = kwargs.pop("help", None) or info.description or ""
    # A switch is off by default, and an unset (None) default is explained by the help text itself.
    if info.default is not None and kwargs.get("action") != "store_true":
        help_text = f"{help_text} (default: {info.default})".strip()
    parser.add_argument(f"--{field.replace('_', '-')}", dest=field, default=None, help=help_text, **kwargs)


def given(args: argparse.Namespace, fields) -> dict:
    """The flags among `fields` set on the command line; the others keep the config's defaults."""
    return {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
