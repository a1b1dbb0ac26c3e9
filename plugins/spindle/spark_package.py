"""Package ``spark_apps`` (the code that runs on the cluster) for shipping with each job.

The wheel is built from the repository's ``setup.py`` with ``pip wheel --no-deps
--no-build-isolation`` (offline, no downloads) and cached by a hash of the sources, so only
the first job after a change pays for the build (~3 s). Every job ships it via ``--py-files``.

Why a ``.zip`` next to the ``.whl``: PySpark adds ``--py-files`` entries to the executors'
``sys.path`` only when they end in ``.zip``, ``.egg`` or ``.jar``
(``SparkContext.PACKAGE_EXTENSIONS``), so a ``.whl`` would reach the driver but not the
executors. A pure-Python wheel is a zip with the packages at its root, so the very same bytes
under a ``.zip`` name are importable everywhere. Managed clusters (Data Proc
``python_file_uris``, EMR ``--py-files``) take the same file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from spindle.config import repo_root, spindle_home

PACKAGE = "spark_apps"
_SKIP_DIRS = {"__pycache__", ".pytest_cache"}


def _source_files(root: Path) -> list[Path]:
    files = [root / "setup.py"]
    for path in sorted((root / PACKAGE).rglob("*")):
        if path.is_file() and not _SKIP_DIRS.intersection(path.relative_to(root).parts) and path.suffix != ".pyc":
            files.append(path)
    return files


def source_hash(root: Path | None = None) -> str:
    """sha256 over the relative paths and contents of ``setup.py`` and ``spark_apps/``."""
    root = Path(root or repo_root())
    digest = hashlib.sha256()
    for path in _source_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_spark_apps_package(root: Path | None = None, cache_dir: Path | None = None, log=None) -> Path:
    """Return the ``.zip`` (wheel bytes) of ``spark_apps`` for the current sources, building it
    once per source hash under ``$SPINDLE_HOME/packages/<hash>/``."""
    root = Path(root or repo_root())
    cache_dir = Path(cache_dir or spindle_home() / "packages")
    if not (root / "setup.py").exists() or not (root / PACKAGE).is_dir():
        raise FileNotFoundError(f"no setup.py and {PACKAGE}/ under {root}")
    key = source_hash(root)[:16]
    target = cache_dir / key
    cached = sorted(target.glob("*.zip")) if target.is_dir() else []
    if cached:
        return cached[0]

    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".build-{key}-", dir=cache_dir) as tmp:
        # Build from a copy: pip/setuptools write build/ and *.egg-info next to setup.py, and the
        # checkout is shared with people editing it.
        src = Path(tmp) / "src"
        src.mkdir()
        shutil.copy2(root / "setup.py", src / "setup.py")
        shutil.copytree(root / PACKAGE, src / PACKAGE, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        out = Path(tmp) / "out"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--quiet",
            "--wheel-dir",
            str(out),
            str(src),
        ]
        if log:
            log.info("Building the spark_apps wheel (source hash %s)", key)
        result = subprocess.run(
            cmd, check=False, capture_output=True, text=True, cwd=tmp, env={**os.environ, "PIP_NO_INPUT": "1"}
        )
        if result.returncode != 0:
            raise RuntimeError(f"building the spark_apps wheel failed:\n{result.stdout}\n{result.stderr}")
        (wheel,) = out.glob("*.whl")
        staged = Path(tmp) / key
        staged.mkdir()
        shutil.copy2(wheel, staged / wheel.name)
        shutil.copy2(wheel, staged / (wheel.stem + ".zip"))
        try:
            staged.rename(target)
        except OSError:
            if not sorted(target.glob("*.zip")):  # someone else won the race with a complete build
                raise
    return min(target.glob("*.zip"))
