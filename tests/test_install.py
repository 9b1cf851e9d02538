"""The pinned dependency set imports: a resolver change must not break a fresh install silently."""

from importlib.metadata import version
from pathlib import Path

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def _pins() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in CONSTRAINTS.read_text().splitlines()]
    return dict(line.split("==") for line in lines if "==" in line)


def test_flagembedding_imports_with_pinned_transformers():
    from FlagEmbedding import BGEM3FlagModel  # noqa: F401  (fails with transformers 5.x)


def test_installed_versions_are_the_pins():
    pins = _pins()
    for package in ("transformers", "FlagEmbedding", "ray"):
        assert version(package) == pins[package], package
