"""BGE-M3 on Ray."""

import time
from importlib.metadata import PackageNotFoundError, version

IMPORT_STARTED = time.time()  # when a process first imported this package (a replica's start-up marks begin here)

DISTRIBUTION = "bge-m3-ray"

try:  # pyproject.toml is the one place the version is written; installed metadata carries it
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
