"""Generates the Python code of the contracts and checks them for breaking changes.

`python tools/protos.py generate` regenerates `clients/python/agentrt/<service>/v1/` and the
descriptor set of the public API that the Envoy edge transcodes (`services/edge/agentrt.binpb`);
`deps` copies the google/api and google/rpc protos the contracts import into
`.build/protodeps` for buf;
`breaking [REF]` runs `buf breaking` (FILE rules) against REF, by default the previous commit.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "clients" / "python"
DEPS = ROOT / ".build" / "protodeps"
EDGE_DESCRIPTORS = ROOT / "services" / "edge" / "agentrt.binpb"
EDGE_PACKAGE = PROTOS / "agentrt" / "gateway" / "v1"
"""The edge serves the gateway's public API: its files and everything they import."""
EDGE_ERROR_PROTOS = ("google/rpc/status.proto", "google/rpc/error_details.proto")
"""The errors' details, which the edge prints as JSON and so must be able to decode."""
GOOGLE_API_PROTOS = ("annotations", "field_behavior", "http", "resource")
GOOGLE_RPC_PROTOS = ("status",)
"""google.rpc messages the contracts use (BatchSpend's per-operation status)."""


def googleapis_root() -> Path:
    """The site-packages folder holding googleapis-common-protos' .proto files."""
    from google.api import field_behavior_pb2

    return Path(field_behavior_pb2.__file__).parent.parent.parent


def proto_files() -> list[Path]:
    return sorted(PROTOS.rglob("*.proto"))


def generate() -> None:
    for stale in OUT.glob("agentrt/*/v1/*_pb2*.py*"):
        stale.unlink()
    files = [str(p.relative_to(PROTOS)) for p in proto_files()]
    from grpc_tools import protoc

    well_known = Path(str(resources.files("grpc_tools") / "_proto"))
    bin_dir = Path(sys.executable).parent
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTOS}",
        f"-I{googleapis_root()}",
        f"-I{well_known}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--mypy_out=quiet:{OUT}",
        f"--mypy_grpc_out=quiet:{OUT}",
        *files,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    edge = [str(p.relative_to(PROTOS)) for p in sorted(EDGE_PACKAGE.glob("*.proto"))]
    # Without source info the set depends only on the contracts, so regenerating it gives
    # the same bytes and `make protos-check` can tell a stale one.
    descriptors = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{googleapis_root()}",
        f"-I{well_known}",
        f"--descriptor_set_out={EDGE_DESCRIPTORS}",
        "--include_imports",
        *edge,
        *EDGE_ERROR_PROTOS,
    ]
    if protoc.main(descriptors) != 0:
        sys.exit("protoc failed on the edge's descriptor set")
    for package in {p.parent for p in OUT.glob("agentrt/*/v1/*_pb2.py")}:
        for folder in (package, package.parent):
            init = folder / "__init__.py"
            if not init.exists():
                dotted = ".".join(folder.relative_to(OUT).parts)
                init.write_text(f'"""Generated code of {dotted}."""\n')


def copy_deps(target: Path = DEPS) -> None:
    api = target / "google" / "api"
    api.mkdir(parents=True, exist_ok=True)
    source = googleapis_root() / "google" / "api"
    for name in GOOGLE_API_PROTOS:
        shutil.copyfile(source / f"{name}.proto", api / f"{name}.proto")
    rpc = target / "google" / "rpc"
    rpc.mkdir(parents=True, exist_ok=True)
    for name in GOOGLE_RPC_PROTOS:
        shutil.copyfile(
            googleapis_root() / "google" / "rpc" / f"{name}.proto", rpc / f"{name}.proto"
        )


def git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=False)


def breaking(ref: str) -> None:
    if git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode != 0:
        print(f"buf breaking: no commit {ref}; nothing to compare against")
        return
    if not git("ls-tree", "-d", ref, "protos").stdout:
        print(f"buf breaking: {ref} has no protos; nothing to compare against")
        return
    buf = str(Path(sys.executable).parent / "buf")
    with tempfile.TemporaryDirectory() as tmp:
        against = Path(tmp)
        archive = git("archive", "--format=tar", ref, "protos", "buf.yaml").stdout
        archive_path = against / "against.tar"
        archive_path.write_bytes(archive)
        with tarfile.open(archive_path) as tar:
            tar.extractall(against, filter="data")
        copy_deps(against / ".build" / "protodeps")
        before, now = against / "before.binpb", against / "now.binpb"
        subprocess.run([buf, "build", str(against), "-o", str(before)], check=True)
        subprocess.run([buf, "build", str(ROOT), "-o", str(now)], check=True)
        rules = ["--config", '{"version": "v2", "breaking": {"use": ["FILE"]}}']
        result = subprocess.run(
            [buf, "breaking", str(now), "--against", str(before), *rules], cwd=ROOT, check=False
        )
        if result.returncode != 0:
            sys.exit(f"buf breaking: the contracts break compatibility with {ref}")
        print(f"buf breaking: compatible with {ref}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate")
    sub.add_parser("deps")
    against = sub.add_parser("breaking")
    against.add_argument("ref", nargs="?", default="HEAD~1")
    args = parser.parse_args()
    if args.command == "generate":
        generate()
    elif args.command == "deps":
        copy_deps()
    else:
        breaking(args.ref)


if __name__ == "__main__":
    main()
