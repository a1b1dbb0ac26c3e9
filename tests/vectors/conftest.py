"""The vector-store tests import ``spindle.vectors`` from plugins/ (as Airflow does) and the
search command's model code from ``spark_apps`` (the repository root)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for folder in (REPO, REPO / "plugins"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
