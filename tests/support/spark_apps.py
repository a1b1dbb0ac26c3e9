"""Shared constants and helpers of the spark_apps tests."""

from tests.support.paths import EDITIONS, REPO, SAMPLES, STS_DEV, STS_TRAIN  # noqa: F401  (the tests' names for them)

METRICS_PREFIX = "SPINDLE_METRICS "


def read_sts(path=STS_DEV):
    """(score, sentence1, sentence2) per pair: split on tabs, columns 4, 5, 6, no CSV quoting."""
    pairs = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            pairs.append((float(fields[4]), fields[5], fields[6]))
    return pairs
