"""Builds plume_client with gRPC stubs generated from the checkout's proto/plume.proto."""

import pathlib
import re

from setuptools import setup

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE.parent / "proto" / "plume.proto"
GEN = HERE / "plume_client" / "_gen"


def generate() -> None:
    """Runs protoc (from grpcio-tools) on plume.proto into plume_client/_gen, with the
    generated module's import made relative so it works inside the package."""
    from grpc_tools import protoc

    GEN.mkdir(exist_ok=True)
    (GEN / "__init__.py").write_text('"""Generated from proto/plume.proto at build time."""\n')
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO.parent}",
            f"--python_out={GEN}",
            f"--grpc_python_out={GEN}",
            str(PROTO),
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed on {PROTO} ({rc})")
    grpc_file = GEN / "plume_pb2_grpc.py"
    text = grpc_file.read_text()
    grpc_file.write_text(re.sub(r"^import plume_pb2 as", "from . import plume_pb2 as", text, flags=re.M))


# Before setup(): its metadata step already lists plume_client._gen as a package.
generate()
setup()
