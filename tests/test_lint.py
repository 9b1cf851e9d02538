"""The linter and the type checker are part of the test run: `ruff check` over the repository and mypy
over `serve_app` (both configured in pyproject.toml), each with the venv's own tool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _check(*args: str) -> None:
    """Run `python -m <args>` from the repository root; fail with its whole output unless it exits 0."""
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=540)
    if result.returncode != 0:
        pytest.fail(f"`{' '.join(args)}` exited {result.returncode}:\n{result.stdout}{result.stderr}", pytrace=False)


def test_ruff_is_clean():
    _check("ruff", "check", "--no-cache", ".")


def test_mypy_is_clean():
    # No arguments: mypy takes what to check (`packages`) and how from [tool.mypy] in pyproject.toml.
    _check("mypy")
