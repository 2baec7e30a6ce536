"""Generates the Python protobuf/gRPC code (with type stubs) from protos/.

The generated package is importable as ``folio.<domain>.v1`` and never committed.
"""

import argparse
import shutil
import sys
import sysconfig
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GOOGLE_API_PROTOS = ("annotations.proto", "http.proto", "field_behavior.proto")


def _include_dirs() -> list[Path]:
    """Our protos, then the well-known types and google/api protos shipped by the packages."""
    google_root = Path(sys.modules["google.api"].__path__[0]).parent.parent  # site-packages
    return [PROTOS, Path(grpc_tools.__file__).parent / "_proto", google_root]


def generate(out: Path) -> None:
    """Compile every proto under protos/folio into ``out``, with .pyi stubs."""
    import google.api  # noqa: F401  (locates the googleapis-common-protos .proto files)

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "folio").rglob("*.proto"))
    args = ["grpc_tools.protoc", *(f"-I{d}" for d in _include_dirs())]
    args += [f"--python_out={out}", f"--grpc_python_out={out}", f"--mypy_out={out}"]
    args += [f"--mypy_grpc_out={out}", *files]
    bindir = Path(sys.executable).parent
    for plugin in ("protoc-gen-mypy", "protoc-gen-mypy_grpc"):
        args.append(f"--plugin={plugin}={bindir / plugin}")
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for directory in [out / "folio", *(out / "folio").rglob("*")]:
        if directory.is_dir():
            (directory / "__init__.py").touch()
    (out / "folio" / "py.typed").touch()


def copy_buf_deps(out: Path) -> None:
    """Copy the google/api protos our API imports, so buf can resolve them offline."""
    import google.api

    target = out / "google" / "api"
    target.mkdir(parents=True, exist_ok=True)
    source = Path(google.api.__path__[0])
    for name in GOOGLE_API_PROTOS:
        shutil.copyfile(source / name, target / name)


def install_path(gen: Path) -> None:
    """Put the generated code on the virtual environment's import path."""
    site = Path(sysconfig.get_paths()["purelib"])
    (site / "folio-generated.pth").write_text(f"{gen.resolve()}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, help="generate code into this directory")
    parser.add_argument("--buf-deps", type=Path, help="copy google/api protos here for buf")
    parser.add_argument("--install-path", type=Path, help="add this directory to sys.path")
    ns = parser.parse_args()
    if ns.install_path:
        install_path(ns.install_path)
    if ns.out:
        generate(ns.out)
    if ns.buf_deps:
        copy_buf_deps(ns.buf_deps)


if __name__ == "__main__":
    main()
