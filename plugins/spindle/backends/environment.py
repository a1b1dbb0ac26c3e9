"""The cluster environment: the Python packages the model jobs import on a managed cluster.

A managed cluster has its own Python (EMR 7: Spark 3.5; Data Proc images 2.0/2.1: Python 3.8)
and none of torch, transformers or sentence-transformers. ``requirements-cluster.txt`` (pinned
in full by ``constraints-cluster.txt``) is that environment; this module packs it into a
relocatable archive with `venv-pack <https://jcristharif.com/venv-pack/>`_, the tool Spark's
own "Python Package Management" guide uses, and names it by a digest of what went in, so the
stage task uploads it once and every later run reuses it.

A job gets it as ``<uri>#environment`` with ``PYSPARK_PYTHON=./environment/bin/python`` for the
driver and the executors, through each service's own settings (see
:func:`spindle.backends.common.JobSpec.spark_properties`).

The backend setting ``environment`` says where the archive comes from:

- ``"build"``: packed here. A venv-pack archive links to its base interpreter by absolute path
  and holds wheels for this machine's OS, so it runs only where the cluster has the same
  Python at the same path: the local fakes, or a container built as in docs/CLOUD_BACKENDS.md.
- an ``s3://`` / ``s3a://`` URI: an archive built for the cluster's image (the documented
  container recipe), shipped as it is.
- ``"provided"``: the image already has the packages (EMR Serverless custom image, an EMR
  bootstrap action, Data Proc ``pip_packages``); nothing is shipped.

Command line: ``python -m spindle.backends.environment build [--cache DIR]`` prints the path.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from spindle.config import repo_root, spindle_home

ALIAS = "environment"
#: The interpreter of the unpacked archive, relative to the container's working directory.
PYTHON = f"./{ALIAS}/bin/python"
BUILD, PROVIDED = "build", "provided"
REMOTE_SCHEMES = ("s3://", "s3a://")

# Not needed to run anything: C++ headers, byte code (rebuilt on import), the installer.
_EXCLUDES = (
    "*/__pycache__/*",
    "*.pyc",
    "lib/python*/site-packages/torch/include/*",
    # OpenVINO runs the encoder on the CPU from its IR: no GPU/NPU plugins, no other frontends
    "lib/python*/site-packages/openvino/include/*",
    "lib/python*/site-packages/openvino/libs/libopenvino_intel_[gn]pu_plugin.so",
    # (tensorflow, tensorflow_lite, paddle, pytorch, jax, gguf; the IR and ONNX ones stay)
    "lib/python*/site-packages/openvino/libs/libopenvino_[tpjg]*_frontend.so*",
    "lib/python*/site-packages/pip/*",
    "lib/python*/site-packages/pip-*",
)


def check_setting(value: object) -> str | None:
    """None when ``value`` is a valid ``environment`` setting, else what is wrong with it."""
    if value in (BUILD, PROVIDED):
        return None
    if (
        isinstance(value, str)
        and value.startswith(REMOTE_SCHEMES)
        and value.endswith((".tar.gz", ".tgz", ".zip", ".tar"))
    ):
        return None
    return (
        f"must be {BUILD!r}, {PROVIDED!r} or the s3:// / s3a:// URI of a packed environment "
        f"(.tar.gz, .tgz, .zip, .tar), not {value!r}"
    )


def requirement_files(root: Path | None = None) -> tuple[Path, Path]:
    root = root or repo_root()
    return root / "requirements-cluster.txt", root / "constraints-cluster.txt"


def digest(root: Path | None = None) -> str:
    """What decides the archive's content: the pins, the Python version and the platform."""
    sha = hashlib.sha256()
    for path in requirement_files(root):
        sha.update(path.read_bytes())
    sha.update(f"{sys.version_info.major}.{sys.version_info.minor}|{platform.system()}|{platform.machine()}".encode())
    return sha.hexdigest()[:16]


def archive_name(root: Path | None = None) -> str:
    return f"spindle-env-py{sys.version_info.major}{sys.version_info.minor}-{digest(root)}.tar.gz"


def _run(cmd: list[str], log: Callable[[str], None]) -> None:
    log("+ " + " ".join(cmd))
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)


def build_archive(cache: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """The packed environment in ``cache`` (default ``$SPINDLE_HOME/artifacts/env``), built when
    missing: a fresh venv of this Python (never this venv: nothing of Airflow may go along),
    torch first, then the pinned requirements, packed with venv-pack."""
    cache = cache or spindle_home() / "artifacts" / "env"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / archive_name()
    if target.exists():
        log(f"Cluster environment {target.name} is already built")
        return target
    requirements, constraints = requirement_files()
    with tempfile.TemporaryDirectory(prefix="spindle-env-", dir=cache) as tmp:
        venv = Path(tmp) / "venv"
        base_python = getattr(sys, "_base_executable", sys.executable)
        _run([base_python, "-m", "venv", str(venv)], log)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        _run([*pip, "torch==2.13.0"], log)  # first, on its own: see requirements-cluster.txt
        _run([*pip, "-r", str(requirements), "-c", str(constraints)], log)
        packed = Path(tmp) / target.name
        excludes = [arg for pattern in _EXCLUDES for arg in ("--exclude", pattern)]
        _run(
            [
                sys.executable,
                "-m",
                "venv_pack",
                "--prefix",
                str(venv),
                "--output",
                str(packed),
                "--compress-level",
                "1",
                "--quiet",
                *excludes,
            ],
            log,
        )
        packed.replace(target)  # atomic: a half-built archive never carries the final name
    log(f"Built cluster environment {target} ({target.stat().st_size / 2**20:.0f} MiB)")
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Pack requirements-cluster.txt for the clusters (venv-pack).")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the archive (if missing) and print its path")
    build.add_argument("--cache", type=Path, help="folder of built archives (default $SPINDLE_HOME/artifacts/env)")
    sub.add_parser("name", help="print the archive name the current pins give")
    args = parser.parse_args(argv)
    if args.command == "name":
        print(archive_name())
        return
    print(build_archive(args.cache, log=lambda line: print(line, file=sys.stderr)))


if __name__ == "__main__":
    main()
