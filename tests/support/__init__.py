"""Plain helpers of the test suite, imported by name (``from tests.support.cloud import BUCKET``).

Fixtures live in the ``conftest.py`` files (the shared ones in ``tests/conftest.py``); what a
test module imports lives here, never in a conftest (pytest loads every folder's ``conftest``
under the same module name, so ``from conftest import ...`` picks whichever came last).

- :mod:`tests.support.paths`: where things are in the checkout (``REPO``, ``DAGS``, samples).
- :mod:`tests.support.airflow_env`: the isolated Airflow of the tests, set up on import; the
  root ``conftest.py`` imports it before anything imports Airflow.
- :mod:`tests.support.cloud`: constants and helpers of the cloud-backend tests (bucket, folder,
  fake credentials, backend settings, running a DAG, reading its outputs).
- :mod:`tests.support.spark_apps`: sample data and the metrics line of the spark_apps jobs.
- :mod:`tests.support.ui`: a real Airflow on loopback and the browser that drives it.

The cloud fakes are a package of their own: :mod:`tests.fakes`.
"""
