"""docker-compose.yaml and Dockerfile, checked without a Docker engine (there is none here).

``docker-compose config`` (Debian's docker-compose v1 package) validates the file and resolves
anchors, profiles and ``${VAR}`` substitution; the rest reads the resolved file and checks that
what it names exists in the checkout: bind-mounted paths, env files, the Dockerfile and what the
Dockerfile copies, and that the stack is the one the README describes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.ui import skip_or_fail

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "spindle-entrypoint.sh"
CORE_SERVICES = {
    "postgres",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}
AIRFLOW_SERVICES = CORE_SERVICES - {"postgres", "airflow-init"}


def _compose_env() -> dict[str, str]:
    """The caller's environment without variables the file substitutes (a developer's shell
    or .env must not change what the tests see)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SPINDLE_", "_AIRFLOW"))}


def docker_compose_config(*extra: str) -> dict:
    binary = shutil.which("docker-compose")
    if binary is None:
        skip_or_fail("no docker-compose binary (apt-get install docker-compose)")
    result = subprocess.run(
        [binary, *extra, "-f", str(COMPOSE), "config"],
        check=False,
        cwd=REPO,
        env=_compose_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def _code(path: Path) -> str:
    """The file without its comment lines."""
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))


@pytest.fixture(scope="module")
def resolved() -> dict:
    return docker_compose_config()


@pytest.fixture(scope="module")
def raw() -> dict:
    """The file as written (no docker-compose needed): anchors resolved by YAML itself."""
    return yaml.safe_load(COMPOSE.read_text())


def _volumes(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of a service's bind mounts, from the short syntax
    ``src:dst[:ro]`` (as written, and as docker-compose v1 prints it) or the long one."""
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                out.append((volume["source"], volume["target"], bool(volume.get("read_only"))))
            continue
        source, target, *mode = str(volume).split(":")
        if source.startswith((".", "/", "~")):
            out.append((source, target, "ro" in mode))
    return out


def test_docker_compose_config_validates(resolved):
    assert CORE_SERVICES <= set(resolved["services"])


def test_validates_with_the_example_env_file():
    config = docker_compose_config("--env-file", str(REPO / ".env.example"))
    assert config["services"]["airflow-scheduler"]["user"] == "50000:0"


def test_every_mounted_path_env_file_and_dockerfile_exists(raw):
    missing = []
    for name, service in raw["services"].items():
        for source, target, _ in _volumes(service):
            path = (REPO / source).resolve() if not source.startswith("/") else Path(source)
            if not path.exists():
                missing.append(f"{name}: volume {source} -> {target}")
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            if not (REPO / env_file).is_file():
                missing.append(f"{name}: env_file {env_file}")
        build = service.get("build")
        if build:
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
            if not dockerfile.is_file():
                missing.append(f"{name}: Dockerfile {dockerfile}")
    assert not missing, missing


def test_code_data_and_secrets_are_mounted_where_airflow_looks(resolved):
    scheduler = resolved["services"]["airflow-scheduler"]
    env = scheduler["environment"]
    targets = {Path(target).name: (source, target, ro) for source, target, ro in _volumes(scheduler)}
    for folder in ("dags", "plugins", "spark_apps", "devtools", "data", "setup.py"):
        assert folder in targets, f"{folder} is not mounted"
        assert Path(targets[folder][0]) == REPO / folder
        assert targets[folder][2], f"{folder} should be mounted read-only"
    assert targets["secrets"][2], "the local secrets file must be mounted read-only"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == targets["dags"][1]
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == targets["plugins"][1]
    assert env["SPINDLE_REPO"] == str(Path(targets["dags"][1]).parent)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert scheduler["user"] == "50000:0", "AIRFLOW_UID (default 50000) is the user of the containers"


def test_the_stack_is_complete_and_healthchecked(raw, resolved):
    services = resolved["services"]
    for name in AIRFLOW_SERVICES | {"postgres"}:
        assert "healthcheck" in services[name], f"{name} has no health check"
        assert "profiles" not in services[name]
    for name in AIRFLOW_SERVICES:
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert raw["services"]["airflow-worker"]["profiles"] == ["celery"]
    assert raw["services"]["redis"]["profiles"] == ["celery"]
    assert raw["services"]["milvus"]["profiles"] == ["milvus"]
    assert services["airflow-scheduler"]["environment"]["SPINDLE_MILVUS_URI"].endswith(".db"), "milvus-lite default"
    assert "_PIP_ADDITIONAL_REQUIREMENTS" not in _code(COMPOSE), "requirements belong in the image"
    assert services["airflow-init"]["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"
    init_script = "/opt/spindle/scripts/init_local_secrets.py"
    assert init_script in " ".join(services["airflow-init"]["command"])
    assert any(target == init_script for _, target, _ in _volumes(services["airflow-init"]))


def _host_path(service: dict, container_path: str) -> Path:
    """Where ``container_path`` of ``service`` is on the host, through its bind mounts."""
    for source, target, _ in sorted(_volumes(service), key=lambda v: -len(v[1])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return (REPO / source).resolve() / Path(container_path).relative_to(target)
    raise AssertionError(f"{container_path} is on no bind mount of the service")


def test_spark_history_serves_the_event_logs_the_airflow_containers_write(resolved, tmp_path):
    """spark-history runs Spark's History Server from the same image over the warehouse's
    ``_spark-events`` (the same host folder the task containers' jobs write to), published on
    the port the "Spark History" links (``SPINDLE_HISTORY_URL``) point at."""
    from spindle import history

    services = resolved["services"]
    server = services["spark-history"]
    assert "profiles" not in server and "healthcheck" in server, "part of the default stack, health-checked"
    assert server["image"] == services["airflow-scheduler"]["image"] and server["build"]
    assert server["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    command = server["command"]
    assert command[:4] == ["python", "-m", "spindle.history", "serve"] and "--dir" not in command
    assert command[command.index("--host") + 1] == "0.0.0.0", "reachable through the published port"
    port = int(command[command.index("--port") + 1])
    assert (
        server["environment"]["PYTHONPATH"]
        == services["airflow-scheduler"]["environment"]["AIRFLOW__CORE__PLUGINS_FOLDER"]
    )
    (published,) = [p["published"] for p in server["ports"] if int(p["target"]) == port]
    assert f":{port}/api/v1/" in " ".join(server["healthcheck"]["test"])

    # One event-log folder: what `serve` reads ($SPINDLE_SPARK_EVENTS_DIR) is where the jobs of the
    # task containers write, the warehouse root of the local secrets file + _spark-events, and
    # the same host folder in every container.
    events = server["environment"][history.ENV_EVENTS_DIR]
    init_env = services["airflow-init"]["environment"]
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "init_local_secrets.py"), str(tmp_path)],
        check=True,
        env={**_compose_env(), "SPINDLE_HOME": init_env["SPINDLE_HOME"]},
    )
    root = json.loads((tmp_path / "connections.json").read_text())["spindle_warehouse"]["extra"]["root"]
    assert events == f"{root}/{history.EVENTS_FOLDER}"
    assert events in " ".join(services["airflow-init"]["command"]), "airflow-init creates it for the server"
    host_folder = _host_path(server, events)
    for name in ("airflow-scheduler", "airflow-worker", "airflow-init"):  # where the tasks run, who creates it
        assert services[name]["environment"][history.ENV_EVENTS_DIR] == events, name
        assert _host_path(services[name], events) == host_folder, name

    # The links the job tasks make point at the published port.
    for name in ("airflow-scheduler", "airflow-worker"):
        base = services[name]["environment"][history.ENV_HISTORY_URL]
        assert base == f"http://localhost:{published}", name
        assert history.app_history_url("app-1", base) == f"http://localhost:{published}/history/app-1/jobs/"


def test_dockerfile_extends_the_official_image_with_java_and_pinned_requirements():
    text = DOCKERFILE.read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "requirements.txt").read_text(), re.MULTILINE))
    assert re.search(r"^ARG AIRFLOW_VERSION=(\S+)$", text, re.MULTILINE).group(1) == pins["apache-airflow"]
    assert re.search(r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}-python", text, re.MULTILINE)
    assert "openjdk-17-jre-headless" in text
    torch_at = text.index(f"torch=={pins['torch']}")
    requirements_at = text.index("-r /opt/spindle/requirements.txt")
    assert torch_at < requirements_at, "torch must be installed first"
    assert "-c /opt/spindle/constraints.txt" in text
    assert "_PIP_ADDITIONAL_REQUIREMENTS" not in _code(DOCKERFILE)
    # What the Dockerfile copies exists and is let through by .dockerignore (an allow-list).
    allowed = {line[1:] for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    for line in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.MULTILINE):
        for source in line.split():
            assert (REPO / source).exists(), f"COPY source {source} is missing"
            assert source in allowed, f"COPY source {source} is excluded by .dockerignore"


def _entrypoint(**env: str) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "SPINDLE_NEXT_ENTRYPOINT": "env"}
    return subprocess.run(
        ["bash", str(ENTRYPOINT)], check=False, env={**base, **env}, capture_output=True, text=True, timeout=30
    )


def _exported(result: subprocess.CompletedProcess) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def test_secrets_backend_is_chosen_by_two_variables():
    local = _exported(_entrypoint())
    assert local["AIRFLOW__SECRETS__BACKEND"] == "airflow.secrets.local_filesystem.LocalFilesystemBackend"
    kwargs = json.loads(local["AIRFLOW__SECRETS__BACKEND_KWARGS"])
    assert kwargs["connections_file_path"] == "/opt/spindle/secrets/connections.json"
    assert local["AIRFLOW__WORKERS__SECRETS_BACKEND"] == local["AIRFLOW__SECRETS__BACKEND"]
    assert local["AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS"] == local["AIRFLOW__SECRETS__BACKEND_KWARGS"]

    lockbox_kwargs = '{"folder_id": "b1gtest", "connections_prefix": "spindle/connections"}'
    lockbox = _exported(_entrypoint(SPINDLE_SECRETS_BACKEND="lockbox", SPINDLE_SECRETS_BACKEND_KWARGS=lockbox_kwargs))
    assert lockbox["AIRFLOW__SECRETS__BACKEND"] == "airflow.providers.yandex.secrets.lockbox.LockboxSecretBackend"
    assert json.loads(lockbox["AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS"])["folder_id"] == "b1gtest"

    sm = _exported(
        _entrypoint(
            SPINDLE_SECRETS_BACKEND="secretsmanager",
            SPINDLE_SECRETS_BACKEND_KWARGS='{"connections_prefix": "spindle/connections"}',
        )
    )
    assert sm["AIRFLOW__SECRETS__BACKEND"].endswith("secrets_manager.SecretsManagerBackend")
    assert sm["SPINDLE_SECRETS_SOURCE"] == "aws-sm://spindle/connections", "the jobs' reference is derived"

    # The backend classes named exist in the installed providers.
    from importlib import import_module

    for name in (local, lockbox, sm):
        module, _, cls = name["AIRFLOW__SECRETS__BACKEND"].rpartition(".")
        assert hasattr(import_module(module), cls)


def test_secrets_backend_mistakes_are_refused_before_airflow_starts():
    unknown = _entrypoint(SPINDLE_SECRETS_BACKEND="vault-ish")
    assert unknown.returncode == 64 and "SPINDLE_SECRETS_BACKEND" in unknown.stderr
    no_folder = _entrypoint(SPINDLE_SECRETS_BACKEND="lockbox")
    assert no_folder.returncode == 64 and "folder_id" in no_folder.stderr
    not_json = _entrypoint(SPINDLE_SECRETS_BACKEND="secretsmanager", SPINDLE_SECRETS_BACKEND_KWARGS="prefix=x")
    assert not_json.returncode == 64 and "SPINDLE_SECRETS_BACKEND_KWARGS" in not_json.stderr
    explicit = _exported(_entrypoint(AIRFLOW__SECRETS__BACKEND="my.Backend"))
    assert explicit["AIRFLOW__SECRETS__BACKEND"] == "my.Backend", "explicit AIRFLOW__ settings win"
