"""A fake "managed image": the Python and Spark a managed cluster's nodes have, and nothing else.

Real Data Proc / EMR nodes run their own Spark and Python; nothing from the Airflow machine's
virtualenv (torch, transformers, sentence-transformers, Airflow) is there. So the fakes must
not run jobs with the Airflow venv's pyspark and Python: they run them on this image.

The image is a separate venv made from the system Python (``/usr/bin/python3``, *not* the
Airflow venv, no system site-packages) with the pins below (Spark 3.5 as on EMR 7, the
pandas/numpy/pyarrow a pandas UDF needs, boto3 as on EMR images), and the S3A connector jars
copied into ``$SPARK_HOME/jars`` as a managed image has them preinstalled (pyspark 3.5's jars are
Hadoop 3.3.4; ``hadoop-aws-3.3.1`` + ``aws-java-sdk-bundle-1.11.901`` from the PyPI sdist of
``sagemaker_pyspark`` are the offline source of a matching connector).

Built once per pin set and cached under ``<cache_dir>/<digest>/``: built in a temporary folder
next to it, then renamed, under a file lock, so a half-built image is never used and two test
processes never build it twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = REPO / ".spindle" / "fake-cluster-image"

#: The image's Python packages. boto3 = the Airflow side's pin (constraints.txt), fine on py3.11.
PINS: dict[str, str] = {
    "pyspark": "3.5.9",
    "pandas": "2.2.3",
    "numpy": "1.26.4",
    "pyarrow": "17.0.0",
    "boto3": "1.44.8",
}
#: The PyPI sdist that carries the S3A connector, and the jars taken from it.
CONNECTOR_SDIST = ("sagemaker_pyspark", "1.4.5")
CONNECTOR_JARS = ("hadoop-aws-3.3.1.jar", "aws-java-sdk-bundle-1.11.901.jar")
#: Bump when the build steps change (it is part of the cache key).
BUILD_FORMAT = 1
#: What an image's node environment keeps from this process: nothing Python- or venv-related.
_KEPT_ENV = ("JAVA_HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "TMPDIR")
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ClusterImage:
    """A built image: ``python`` is the nodes' default python3, ``spark_home`` their Spark."""

    root: Path
    python: Path
    spark_home: Path
    bin_dir: Path

    @property
    def spark_submit(self) -> Path:
        return self.spark_home / "bin" / "spark-submit"

    def env(self, home: Path | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A node's environment, built from scratch (not inherited): no PYTHONPATH, no
        VIRTUAL_ENV, no PYSPARK_* pointing at the Airflow venv; PATH = the image's bin + system
        dirs; JAVA_HOME kept; the hub switched off (there is none here); ``extra`` on top."""
        env = {key: os.environ[key] for key in _KEPT_ENV if os.environ.get(key)}
        env.update(
            PATH=f"{self.bin_dir}:{self.spark_home / 'bin'}:{_SYSTEM_PATH}",
            HOME=str(home or self.root / "home"),
            SPARK_HOME=str(self.spark_home),
            PYSPARK_PYTHON=str(self.python),
            SPARK_LOCAL_IP="127.0.0.1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        env.update(extra or {})
        return env


def base_python() -> str:
    """The system Python 3 the image's venv is made from (never a virtualenv's)."""
    for candidate in ("/usr/bin/python3.11", "/usr/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return getattr(sys, "_base_executable", None) or sys.executable


def image_digest(python: str | None = None) -> str:
    """Cache key: the pins, the connector, the base interpreter and the build format."""
    python = python or base_python()
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    spec = {
        "pins": PINS,
        "connector": [*CONNECTOR_SDIST, *CONNECTOR_JARS],
        "python": [python, version],
        "format": BUILD_FORMAT,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _image_at(root: Path) -> ClusterImage:
    python = root / "venv" / "bin" / "python"
    site = next((root / "venv" / "lib").glob("python3.*/site-packages"))
    return ClusterImage(root=root, python=python, spark_home=site / "pyspark", bin_dir=root / "venv" / "bin")


def ensure_cluster_image(cache_dir: Path | str | None = None, log: Callable[[str], None] | None = None) -> ClusterImage:
    """The cached image for the current pins, built first if missing (a couple of minutes)."""
    cache = Path(cache_dir or os.environ.get("SPINDLE_FAKE_IMAGE_DIR") or DEFAULT_CACHE_DIR)
    say = log or (lambda text: print(f"[fake cluster image] {text}", flush=True))
    python = base_python()
    final = cache / image_digest(python)
    if (final / "image.json").exists():
        return _image_at(final)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        if not (final / "image.json").exists():
            _build(final, python, say)
    return _image_at(final)


# --------------------------------------------------------------------------- the build
def _run(cmd: list[str], say: Callable[[str], None], **kwargs) -> None:
    say("$ " + " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(
            f"fake cluster image build step failed ({done.returncode}): {' '.join(cmd)}\n"
            f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )


def _build(final: Path, python: str, say: Callable[[str], None]) -> None:
    started = time.monotonic()
    say(f"building {final} (first time only: a couple of minutes)")
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=final.parent))
    try:
        venv = tmp / "venv"
        _run([python, "-m", "venv", str(venv)], say)
        pins = [f"{name}=={version}" for name, version in PINS.items()]
        _run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input", "--disable-pip-version-check", *pins],
            say,
            env=_pip_env(),
        )
        image = _image_at(tmp)
        _add_connector(image, tmp / "download", say)
        _smoke_test(image, say)
        shutil.rmtree(tmp / "download", ignore_errors=True)
        _relocate_scripts(venv / "bin", str(tmp), str(final))
        (tmp / "home").mkdir()
        (tmp / "image.json").write_text(
            json.dumps(
                {
                    "pins": PINS,
                    "connector": CONNECTOR_JARS,
                    "python": python,
                    "built_in_s": round(time.monotonic() - started, 1),
                }
            )
        )
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"built in {time.monotonic() - started:.0f} s")


def _pip_env() -> dict[str, str]:
    """pip's environment: this process's minus anything that points at the Airflow venv."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _add_connector(image: ClusterImage, download: Path, say: Callable[[str], None]) -> None:
    """Copy the S3A connector jars out of the sdist into ``$SPARK_HOME/jars``."""
    name, version = CONNECTOR_SDIST
    jars = image.spark_home / "jars"
    download.mkdir(parents=True, exist_ok=True)
    _run(
        [
            str(image.python),
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            "-d",
            str(download),
            f"{name}=={version}",
        ],
        say,
        env=_pip_env(),
    )
    sdist = next(download.glob("*.tar.gz"))
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            base = member.name.rsplit("/", 1)[-1]
            if "/deps/jars/" in member.name and base in CONNECTOR_JARS:
                source = archive.extractfile(member)
                with open(jars / base, "wb") as target:
                    shutil.copyfileobj(source, target)
    missing = [jar for jar in CONNECTOR_JARS if not (jars / jar).exists()]
    if missing:
        raise RuntimeError(f"{sdist.name} has no {missing} under deps/jars/")
    say(f"S3A connector jars copied into {jars}")


_SMOKE = """
import pandas as pd
from pyspark.sql import SparkSession, functions as F
spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
plus_one = F.pandas_udf(lambda s: s + 1.0, "double")
got = spark.range(10).select(plus_one(F.col("id").cast("double")).alias("y")).agg(F.sum("y")).first()[0]
assert got == 55.0, got
spark._jvm.java.lang.Class.forName("org.apache.hadoop.fs.s3a.S3AFileSystem")
spark.stop()
print("smoke test ok")
"""


def _smoke_test(image: ClusterImage, say: Callable[[str], None]) -> None:
    """A pandas UDF round trip and the S3A class load, on the image's own Python and Spark."""
    env = image.env(home=image.root)
    _run([str(image.python), "-c", _SMOKE], say, env=env, cwd=image.root, timeout=300)
    say("smoke test passed (pandas UDF round trip, S3AFileSystem loads)")


def _relocate_scripts(bin_dir: Path, old: str, new: str) -> None:
    """Console scripts carry the build folder in their shebang: point them at the final one."""
    for script in bin_dir.iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        data = script.read_bytes()
        if data.startswith(b"#!") and old.encode() in data[:512]:
            script.write_bytes(data.replace(old.encode(), new.encode(), 1))


def main() -> None:
    image = ensure_cluster_image()
    print(json.dumps({"python": str(image.python), "spark_home": str(image.spark_home)}, indent=2))


if __name__ == "__main__":
    main()
