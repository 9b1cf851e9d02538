"""Generate the Python stubs of `serve_app/grpc/protos/*.proto` (checked in beside them), or check them.

    python -m serve_app.tools.protos           # rewrite the stubs
    python -m serve_app.tools.protos --check   # exit 1 when a checked-in stub differs from a fresh one

Each `.proto` is compiled under its bare file name (`tei.proto`), as a TEI user compiling TEI's own file
would: the two register the same descriptor, so a process may hold both. protoc writes the `_grpc`
module's import of its message module as a top-level import, and names the messages' module by the bare
file name: both are rewritten so the stubs live in this package (Serve pickles each request, by its class's
module, on its way from the proxy to the replica). Needs `grpcio-tools` (the `dev` extra).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

PROTOS = Path(__file__).resolve().parents[1] / "grpc" / "protos"
PACKAGE = "serve_app.grpc.protos"


def generate(out: Path, protos: Path = PROTOS) -> list[Path]:
    """Compile every `.proto` of `protos` into `out`; the files written."""
    from grpc_tools import protoc  # dev-only: the served package never needs it

    files = sorted(p.name for p in protos.glob("*.proto"))
    args = ["protoc", f"-I{protos}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *files]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {files}")
    for grpc_module in out.glob("*_pb2_grpc.py"):
        text = grpc_module.read_text()
        grpc_module.write_text(re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", text, flags=re.M))
    for message_module in out.glob("*_pb2.py"):  # the module messages name for pickle (Serve pickles requests)
        text = message_module.read_text()
        message_module.write_text(re.sub(r"BuildTopDescriptorsAndMessages\(DESCRIPTOR, '(\w+_pb2)'",
                                         rf"BuildTopDescriptorsAndMessages(DESCRIPTOR, '{PACKAGE}.\1'", text))
    return sorted(p for p in out.iterdir() if "_pb2" in p.name)


def stale(protos: Path = PROTOS) -> list[str]:
    """The stubs in `protos` that differ from (or are missing beside) freshly generated ones."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp), protos)
        return [f.name for f in fresh
                if not (protos / f.name).exists() or (protos / f.name).read_text() != f.read_text()]


def main(argv: list[str] | None = None) -> int:
    """The command line above."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if any stub is stale")
    args = parser.parse_args(argv)
    if args.check:
        if names := stale():
            print(f"stale gRPC stubs: {', '.join(names)}; run python -m serve_app.tools.protos", file=sys.stderr)
            return 1
        return 0
    for path in generate(PROTOS):
        print(path.relative_to(PROTOS.parents[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
