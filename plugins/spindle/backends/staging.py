"""Upload what a managed cluster needs to run ``spark_apps`` jobs (S3-compatible storage,
through the amazon provider's :class:`S3Hook`): the ``spark_apps`` wheel (as ``.zip``, see
:mod:`spindle.packaging`), each job's entry file, the model directory as a ``.tar.gz``
(unpacked by Spark on every node as ``--archives ...#model``, so no worker downloads a model)
and, unless the cluster shares this filesystem, the local input files.

Uploads are content-addressed (a hash in the key) and skipped when the object is already
there, so nightly runs re-upload nothing that did not change.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from spindle.backends import environment
from spindle.config import repo_root, spindle_home

from spindle.spark_package import build_spark_apps_package, source_hash

MODEL_ALIAS = "model"


def _dir_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}\0{stat.st_size}\0{int(stat.st_mtime)}\0".encode())
    return digest.hexdigest()[:16]


def model_archive(model_dir: Path, cache: Path | None = None) -> Path:
    """``<hash>.tar.gz`` of the model directory's *contents* (cached by a hash of names,
    sizes and mtimes)."""
    cache = cache or spindle_home() / "artifacts" / "models"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{model_dir.name}-{_dir_hash(model_dir)}.tar.gz"
    if not target.exists():
        tmp = target.with_suffix(".tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            for item in sorted(model_dir.iterdir()):
                tar.add(item, arcname=item.name)
        tmp.replace(target)
    return target


class StageSparkAppsOperator(BaseOperator):
    """Upload the job code, the cluster environment, the models and the inputs; return what
    the job operators need::

        {"bucket", "prefix", "scheme", "jobs": {job: uri}, "py_files": [uri],
         "environment": "uri#environment" | None, "models": {local dir: "uri#model"},
         "rewrites": {local path: remote URI or archive alias}}

    :param jobs: job names under ``spark_apps/jobs/``.
    :param settings: the backend's settings (``bucket``, ``prefix``, ``environment``,
        ``upload_inputs``, and the storage connection under ``conn_key``) (templated).
    :param conn_key: which setting names the S3 connection (``s3_conn_id``, ``aws_conn_id``).
    :param scheme: URI scheme the cluster reads (``s3a`` on Data Proc, ``s3`` on EMR).
    :param model_path: local model directory to ship (templated), a list of them (the first
        is unpacked as ``model``, the next as ``model2``, ...; None entries are left out), or None.
    :param input_paths: local inputs (files, folders, globs) to upload unless ``upload_inputs``
        is false (templated); keys carry a digest of the content, so an unchanged multi-GB dump
        is uploaded once, not every night.
    """

    template_fields: Sequence[str] = ("settings", "model_path", "input_paths")
    ui_color = "#eef3e2"

    def __init__(
        self,
        *,
        jobs: Sequence[str],
        settings: Any,
        conn_key: str,
        scheme: str = "s3",
        model_path: Any = None,
        input_paths: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.jobs = list(jobs)
        self.settings = settings
        self.conn_key = conn_key
        self.scheme = scheme
        self.model_path = model_path
        self.input_paths = input_paths

    def _hook(self):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=self.settings[self.conn_key])

    def _put(self, hook, path: Path, key: str, bucket: str) -> str:
        if hook.check_for_key(key, bucket_name=bucket):
            self.log.info("%s://%s/%s is already there", self.scheme, bucket, key)
        else:
            self.log.info("Uploading %s (%d bytes) to %s://%s/%s", path, path.stat().st_size, self.scheme, bucket, key)
            hook.load_file(str(path), key, bucket_name=bucket, replace=True)
        return f"{self.scheme}://{bucket}/{key}"

    def execute(self, context: Any) -> dict[str, Any]:
        settings = self.settings
        bucket, prefix = settings["bucket"], settings.get("prefix", "spindle").strip("/")
        hook = self._hook()
        root = repo_root()
        code = f"{prefix}/artifacts/spark_apps/{source_hash(root)[:16]}"
        package = build_spark_apps_package(log=self.log)
        staged: dict[str, Any] = {
            "bucket": bucket,
            "prefix": prefix,
            "scheme": self.scheme,
            "jobs": {},
            "py_files": [self._put(hook, package, f"{code}/{package.name}", bucket)],
            "environment": self._stage_environment(hook, bucket, prefix),
            "models": {},
            "rewrites": {},
        }
        for job in self.jobs:
            path = root / "spark_apps" / "jobs" / f"{job}.py"
            if not path.is_file():
                raise FileNotFoundError(f"no job {job!r}: {path} does not exist")
            staged["jobs"][job] = self._put(hook, path, f"{code}/jobs/{job}.py", bucket)
        self._stage_models(hook, bucket, prefix, staged)
        if settings.get("upload_inputs", True):
            self._stage_inputs(hook, bucket, prefix, staged)
        self.log.info("Staged: %s", staged)
        return staged

    def _stage_environment(self, hook, bucket: str, prefix: str) -> str | None:
        """``uri#environment`` of the cluster environment (see :mod:`.environment`), or None
        when the image provides the packages."""
        choice = self.settings.get("environment", environment.PROVIDED)
        if choice == environment.PROVIDED:
            self.log.info("Cluster environment: provided by the cluster image (nothing shipped)")
            return None
        if choice != environment.BUILD:
            return f"{choice}#{environment.ALIAS}"  # a prebuilt archive, shipped as it is
        archive = environment.build_archive(log=self.log.info)
        uri = self._put(hook, archive, f"{prefix}/artifacts/environments/{archive.name}", bucket)
        return f"{uri}#{environment.ALIAS}"

    def _stage_models(self, hook, bucket: str, prefix: str, staged: dict[str, Any]) -> None:
        models = self.model_path if isinstance(self.model_path, (list, tuple)) else [self.model_path]
        for number, model_path in enumerate(models):
            if not model_path or str(model_path) in staged["rewrites"]:
                continue
            alias = MODEL_ALIAS if number == 0 else f"{MODEL_ALIAS}{number + 1}"
            archive = model_archive(Path(str(model_path)))
            uri = self._put(hook, archive, f"{prefix}/artifacts/models/{archive.name}", bucket)
            staged["models"][str(model_path)] = f"{uri}#{alias}"
            staged["rewrites"][str(model_path)] = alias

    def _stage_inputs(self, hook, bucket: str, prefix: str, staged: dict[str, Any]) -> None:
        inputs = self.input_paths or []
        for value in [v for v in ([inputs] if isinstance(inputs, str) else list(inputs)) if v]:
            files, pattern = input_files(str(value))
            if not files:  # a remote URI: the job reads it as given
                continue
            base = f"{prefix}/inputs/{content_digest(files)}"
            for name, file in files.items():
                self._put(hook, file, f"{base}/{name}", bucket)
            staged["rewrites"][str(value)] = f"{self.scheme}://{bucket}/{base}/{pattern}".rstrip("/")


def input_files(value: str) -> tuple[dict[str, Path], str]:
    """The local files behind an input (a file, a folder or a glob) keyed by the name they get
    under the upload folder, and what replaces the input in the job's arguments relative to
    that folder: the file's name, ``""`` for a folder, the glob's last part for a glob."""
    path = Path(value)
    if path.is_file():
        return {path.name: path}, path.name
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file())
        return {str(p.relative_to(path)).replace(os.sep, "/"): p for p in found}, ""
    if any(ch in path.name for ch in "*?["):
        return {p.name: p for p in sorted(path.parent.glob(path.name)) if p.is_file()}, path.name
    return {}, ""


def content_digest(files: dict[str, Path]) -> str:
    """A digest of names and contents: the upload folder changes when any byte does."""
    digest = hashlib.sha256()
    for name, path in sorted(files.items()):
        digest.update(f"{name}\0{file_sha256(path)}\0".encode())
    return digest.hexdigest()[:20]


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached by (path, size, mtime) in ``$SPINDLE_HOME/artifacts/hashes.json``:
    hashing a multi-GB dump once, not every night."""
    cache_file = spindle_home() / "artifacts" / "hashes.json"
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        cache[key] = digest.hexdigest()
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_file)
    return cache[key]
