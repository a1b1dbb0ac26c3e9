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
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from spindle.config import repo_root, spindle_home

try:
    from spindle.spark_package import build_spark_apps_package, source_hash
except ImportError:  # older name of the same module
    from spindle.packaging import build_spark_apps_package, source_hash  # type: ignore[no-redef]

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
    """Upload the job code, model and inputs; return what the job operators need::

        {"jobs": {job: uri}, "py_files": [uri], "archives": ["uri#model"],
         "rewrites": {local path: remote URI or archive alias}, "bucket": ..., "prefix": ...}

    :param jobs: job names under ``spark_apps/jobs/``.
    :param settings: the backend's settings (``bucket``, ``prefix``, ``upload_inputs``, and the
        storage connection under ``conn_key``) (templated: ``check_backend``'s XCom).
    :param conn_key: which setting names the S3 connection (``s3_conn_id``, ``aws_conn_id``).
    :param scheme: URI scheme the cluster reads (``s3a`` on Data Proc, ``s3`` on EMR).
    :param model_path: local model directory to ship (templated), a list of them (the first
        is unpacked as ``model``, the next as ``model2``, ...; None entries are left out), or None.
    :param input_paths: local inputs to upload unless ``upload_inputs`` is false (templated).
    """

    template_fields: Sequence[str] = ("settings", "model_path", "input_paths")
    ui_color = "#eef3e2"

    def __init__(self, *, jobs: Sequence[str], settings: Any, conn_key: str, scheme: str = "s3",
                 model_path: Any = None, input_paths: Any = None, **kwargs: Any) -> None:  # fmt: skip
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
            self.log.info("s3://%s/%s is already there", bucket, key)
        else:
            self.log.info("Uploading %s (%d bytes) to s3://%s/%s", path, path.stat().st_size, bucket, key)
            hook.load_file(str(path), key, bucket_name=bucket, replace=True)
        return f"{self.scheme}://{bucket}/{key}"

    def execute(self, context: Any) -> dict[str, Any]:
        settings = self.settings
        bucket, prefix = settings["bucket"], settings.get("prefix", "spindle").strip("/")
        hook = self._hook()
        root = repo_root()
        code_hash = source_hash(root)[:16]
        package = build_spark_apps_package(log=self.log)
        code = f"{prefix}/artifacts/spark_apps/{code_hash}"
        staged: dict[str, Any] = {"bucket": bucket, "prefix": prefix, "jobs": {}, "py_files": [], "archives": [],
                                  "rewrites": {}}  # fmt: skip
        staged["py_files"].append(self._put(hook, package, f"{code}/{package.name}", bucket))
        for job in self.jobs:
            path = root / "spark_apps" / "jobs" / f"{job}.py"
            if not path.is_file():
                raise FileNotFoundError(f"no job {job!r}: {path} does not exist")
            staged["jobs"][job] = self._put(hook, path, f"{code}/jobs/{job}.py", bucket)
        models = self.model_path if isinstance(self.model_path, (list, tuple)) else [self.model_path]
        for number, model_path in enumerate(models):
            if not model_path or str(model_path) in staged["rewrites"]:
                continue
            alias = MODEL_ALIAS if number == 0 else f"{MODEL_ALIAS}{number + 1}"
            archive = model_archive(Path(str(model_path)))
            uri = self._put(hook, archive, f"{prefix}/artifacts/models/{archive.name}", bucket)
            staged["archives"].append(f"{uri}#{alias}")
            staged["rewrites"][str(model_path)] = alias
        inputs = self.input_paths or []
        inputs = [v for v in ([inputs] if isinstance(inputs, str) else list(inputs)) if v]
        if settings.get("upload_inputs", True):
            run = context["ti"].run_id.replace(":", "_").replace("+", "_")
            for value in inputs:
                path = Path(str(value))
                if not path.exists():  # a remote URI or a glob: the job reads it as given
                    continue
                files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
                base = f"{prefix}/inputs/{context['ti'].dag_id}/{run}/{path.name}"
                for file in files:
                    rel = "" if file == path else "/" + str(file.relative_to(path)).replace(os.sep, "/")
                    self._put(hook, file, base + rel, bucket)
                staged["rewrites"][str(value)] = f"{self.scheme}://{bucket}/{base}"
        self.log.info("Staged: %s", staged)
        return staged
