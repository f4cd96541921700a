"""Generates the gRPC stubs of greenslice.v1 from the repository's proto/ into greenslice_client/_gen.

Run once after checkout and after any change to proto/ (the tests run it themselves):
    python generate.py
"""

import pathlib
import sys

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto"
OUT = HERE / "greenslice_client" / "_gen"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "__init__.py").write_text("")
    files = [str(p.relative_to(PROTO)) for p in sorted((PROTO / "greenslice" / "v1").glob("*.proto"))]
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    rc = protoc.main(
        ["grpc_tools.protoc", f"-I{PROTO}", f"-I{include}", f"--python_out={OUT}", f"--pyi_out={OUT}", f"--grpc_python_out={OUT}", *files]
    )
    if rc != 0:
        return rc
    # The generated modules import each other as `greenslice.v1.x_pb2`; make that package importable
    # from inside _gen.
    for d in (OUT / "greenslice", OUT / "greenslice" / "v1"):
        (d / "__init__.py").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
