"""BGE-M3 on Ray."""

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "bge-m3-ray"

try:  # pyproject.toml is the one place the version is written; installed metadata carries it
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
