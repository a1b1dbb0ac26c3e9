"""Shared constants and helpers of the spark_apps tests (a uniquely named module: every test
folder has a ``conftest``, so importing from it would be ambiguous)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data" / "samples"
EDITIONS = SAMPLES / "openlibrary" / "editions-head-n1000.txt"
STS_DEV = SAMPLES / "stsbenchmark" / "sts-dev.csv"
METRICS_PREFIX = "SPINDLE_METRICS "


def read_sts(path=STS_DEV):
    """(score, sentence1, sentence2) per pair: split on tabs, columns 4, 5, 6, no CSV quoting."""
    pairs = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            pairs.append((float(fields[4]), fields[5], fields[6]))
    return pairs
