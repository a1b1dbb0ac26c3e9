"""Fixtures of the fault-injection tests: the lane a fault hits (local, or a cloud lane on the
fakes of ``tests/cloud/conftest.py``), a DagBag of their own and the record of what survived.

The backends come from ``SPINDLE_FAULTS_BACKENDS`` (default ``local``: the normal test run);
``scripts/faults.py`` sets it to the whole matrix and collects the records
(``SPINDLE_FAULTS_RESULTS``). A test marked ``@pytest.mark.backends("local")`` runs on those
backends only.
"""

from __future__ import annotations

import pytest

from tests.support.airflow_env import SPINDLE_HOME, parse_dags
from tests.support.faults import FaultRecord, Lane, sample_copies, selected_backends
from tests.support.paths import EDITIONS

if set(selected_backends()) - {"local"}:  # the cloud fakes' fixtures, only when a cloud lane is asked for
    from tests.cloud.conftest import cluster_environment, fake_aws, fake_yandex  # noqa: F401


def pytest_configure(config):
    config.addinivalue_line("markers", "backends(*names): the backends a fault test applies to")


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        allowed = marker.args if marker else None
        backends = [b for b in selected_backends() if allowed is None or b in allowed]
        metafunc.parametrize("backend", backends, scope="module")  # module fixtures may use it


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" or report.failed:
        item.stash.setdefault(_OUTCOME, []).append(report)
    return report


_OUTCOME = pytest.StashKey[list]()


@pytest.fixture
def record(request, backend):
    """The test's :class:`FaultRecord`, written (``SPINDLE_FAULTS_RESULTS``) when the test ends."""
    rec = FaultRecord(fault=request.node.originalname.removeprefix("test_"), backend=backend)
    yield rec
    reports = request.node.stash.get(_OUTCOME, [])
    if any(r.failed for r in reports):
        call = [r for r in reports if r.when == "call"]
        rec.outcome = "fail" if call and call[0].failed else "error"
        failure = next(r for r in reports if r.failed)
        rec.note("FAILED: " + str(failure.longrepr).strip().splitlines()[-1][:300])
    else:
        rec.outcome = "pass"
    rec.write()


@pytest.fixture(scope="module")
def fault_dagbag(airflow_db):
    """The fault tests' own DagBag: they switch task retries off on its DAG objects."""
    bag = parse_dags()
    assert not bag.import_errors, bag.import_errors
    return bag


@pytest.fixture(scope="session")
def fault_input(tmp_path_factory) -> str:
    """The bundled sample twice over (2000 editions, ~450 kept): the local embed job runs long
    enough to be hit in its embed stage."""
    return str(sample_copies(EDITIONS, tmp_path_factory.mktemp("fault-input") / "editions-x2.txt", 2))


@pytest.fixture
def lane(backend, request) -> Lane:
    """The backend's lane; a cloud lane starts the fakes and points the backend's settings at them."""
    if backend == "local":
        return Lane(backend, [SPINDLE_HOME / "clusters"], input_path=request.getfixturevalue("fault_input"))
    return cloud_lane(backend, request)


def cloud_lane(backend: str, request) -> Lane:
    """A cloud backend's lane on the fakes (session fixtures), its settings pointed at them."""
    from tests.support.cloud import set_backend_settings

    request.getfixturevalue("cluster_environment")
    aws = request.getfixturevalue("fake_aws")
    fakes = {"aws": aws}
    homes = [aws.runner.clusters.home]
    if backend in ("yandex", "yandex_spark"):  # both run on the Yandex fake's clusters
        fakes["yandex"] = request.getfixturevalue("fake_yandex")
        homes.append(fakes["yandex"].local_clusters.home)
    set_backend_settings(backend)
    return Lane(backend, homes, fakes)


@pytest.fixture(scope="module", autouse=True)
def _stop_leftover_clusters():
    """Safety net: a failing fault test must not leave its cluster running for the next one
    (the tests count what is left *before* this runs). Other modules' clusters are left alone."""
    from spindle.hooks.local_spark import LocalSparkClusterHook

    hook = LocalSparkClusterHook(home=str(SPINDLE_HOME / "clusters"))
    before = {cluster.cluster_id for cluster in hook.list_clusters()}
    yield
    for cluster in hook.list_clusters():
        if cluster.cluster_id not in before:
            hook.delete_cluster(cluster.cluster_id)
