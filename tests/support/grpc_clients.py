"""Client stubs compiled from this server's `.proto` files with grpcio-tools, the way a client of TEI's
`tei.proto` (or of `bge_m3.proto`) builds its own: not the server's checked-in stubs."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from grpc_tools import protoc

from serve_app.grpc import servicer

PROTOS = Path(servicer.__file__).parent / "protos"
MODULES = ("tei_pb2", "tei_pb2_grpc", "bge_m3_pb2", "bge_m3_pb2_grpc")


def compile_clients(out: Path) -> dict[str, ModuleType]:
    """`{module name: module}` for MODULES, generated into `out` and imported from there."""
    assert protoc.main(["protoc", f"-I{PROTOS}", f"--python_out={out}", f"--grpc_python_out={out}",
                        "tei.proto", "bge_m3.proto"]) == 0
    sys.path.insert(0, str(out))
    try:
        return {name: importlib.import_module(name) for name in MODULES}
    finally:
        sys.path.remove(str(out))
