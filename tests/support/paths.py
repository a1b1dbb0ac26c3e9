"""Where things are in the checkout: the paths every test folder uses."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
PLUGINS = REPO / "plugins"
SPARK_APPS = REPO / "spark_apps"
BENCH = REPO / "bench"
SAMPLES = REPO / "data" / "samples"
#: The first 1000 Open Library editions (tab-separated dump lines, JSON in column 5).
EDITIONS = SAMPLES / "openlibrary" / "editions-head-n1000.txt"
STS_DEV = SAMPLES / "stsbenchmark" / "sts-dev.csv"
STS_TRAIN = SAMPLES / "stsbenchmark" / "sts-train.csv"
#: Logs and screenshots a test keeps for a person to look at (git-ignored).
TEST_ARTIFACTS = REPO / "test-artifacts"
