"""The checked-in gRPC stubs are what grpcio-tools generates from the `.proto` files beside them, and every
shipped Serve config enables this server's gRPC services on port 9000."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve_app.grpc.servicer import SERVICER_FUNCTIONS
from serve_app.tools import protos

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [ROOT / "serve_config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]


def test_checked_in_stubs_equal_freshly_generated_ones():
    assert protos.stale() == []


def test_a_changed_proto_makes_its_stubs_stale(tmp_path):
    """The check can fail: a field added to a copy of the protos leaves the copied stubs behind."""
    for path in protos.PROTOS.iterdir():
        if path.suffix in (".proto", ".py", ".pyi"):
            (tmp_path / path.name).write_text(path.read_text())
    native = tmp_path / "bge_m3.proto"
    native.write_text(native.read_text().replace("message InfoRequest {}", "message InfoRequest { string x = 1; }"))
    assert set(protos.stale(tmp_path)) >= {"bge_m3_pb2.py", "bge_m3_pb2.pyi"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_serves_every_grpc_service_on_port_9000(path):
    grpc_options = yaml.safe_load(path.read_text())["grpc_options"]
    assert grpc_options["port"] == 9000
    assert grpc_options["grpc_servicer_functions"] == SERVICER_FUNCTIONS
