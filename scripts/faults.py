#!/usr/bin/env python
"""Run the fault-injection tests (``tests/faults/``) on a matrix of backends and print what each
fault left behind: fault x backend -> run state, clusters left, rows lost, rows duplicated,
seconds to clean up.

    . scripts/env.sh && python scripts/faults.py                       # every backend
    . scripts/env.sh && python scripts/faults.py --backends local,emr  # some
    . scripts/env.sh && python scripts/faults.py --backends local --real-scheduler  # + SIGKILL faults
    python scripts/faults.py --table test-artifacts/faults/results.jsonl  # print a table again

Each backend gets its own pytest session (``SPINDLE_FAULTS_BACKENDS=<backend>``), so a partial
matrix still leaves the records of the backends that finished; the cloud lanes run against the
fakes of ``tests/cloud/conftest.py``. Records are appended as JSON lines to ``--results``
(``SPINDLE_FAULTS_RESULTS``); the exit status is non-zero when a pytest session failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("local", "yandex", "yandex_spark", "emr", "emr_serverless")
COLUMNS = (
    ("fault", "fault"),
    ("backend", "backend"),
    ("outcome", "test"),
    ("run_state", "run state"),
    ("clusters_left", "clusters left"),
    ("rows_expected", "rows expected"),
    ("rows_lost", "rows lost"),
    ("rows_duplicated", "rows duplicated"),
    ("cleanup_seconds", "s to clean up"),
)


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cell(value) -> str:
    return "-" if value is None or value == "" else str(value)


def table(records: list[dict], markdown: bool = False) -> str:
    rows = [[_cell(rec.get(key)) for key, _ in COLUMNS] for rec in records]
    heads = [title for _, title in COLUMNS]
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(heads)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    notes = [f"- {rec['fault']} / {rec['backend']}: {'; '.join(rec['notes'])}" for rec in records if rec.get("notes")]
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma list (default: all)")
    parser.add_argument("--results", type=Path, default=REPO / "test-artifacts" / "faults" / "results.jsonl")
    parser.add_argument("--keep", action="store_true", help="append to --results instead of starting it anew")
    parser.add_argument("--table", type=Path, help="only print the table of this results file")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression (a subset of the faults)")
    parser.add_argument(
        "--real-scheduler",
        action="store_true",
        help="also the SIGKILL faults under a real Airflow (local lane; SPINDLE_FAULTS_REAL_SCHEDULER=1)",
    )
    args = parser.parse_args(argv)

    if args.table:
        print(table(read_records(args.table), args.markdown))
        return 0
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; known: {', '.join(BACKENDS)}")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    if not args.keep and args.results.exists():
        args.results.unlink()
    status = 0
    for backend in backends:
        env = {**os.environ, "SPINDLE_FAULTS_BACKENDS": backend, "SPINDLE_FAULTS_RESULTS": str(args.results)}
        env["SPINDLE_FAULTS_FULL"] = "1"  # the faults the test command leaves out (tests/faults: FULL_MATRIX)
        if args.real_scheduler:
            env["SPINDLE_FAULTS_REAL_SCHEDULER"] = "1"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/faults"]
        if args.keyword:
            command += ["-k", args.keyword]
        started = time.monotonic()
        print(f">> {backend}: {' '.join(command[2:])}", flush=True)
        code = subprocess.run(command, cwd=REPO, env=env, check=False).returncode
        print(f">> {backend}: pytest exit {code} in {time.monotonic() - started:.0f} s", flush=True)
        status = status or code
    clouds = [b for b in backends if b != "local"]
    if clouds and not args.keyword:  # create failures: operator-level against the fakes, seconds each
        env = {**os.environ, "SPINDLE_FAULTS_RESULTS": str(args.results)}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/cloud/test_cleanup.py"]
        print(f">> create failures: {' '.join(command[2:])}", flush=True)
        status = status or subprocess.run(command + ["-k", "create"], cwd=REPO, env=env, check=False).returncode
    print()
    print(table(read_records(args.results), args.markdown))
    return status


if __name__ == "__main__":
    sys.exit(main())
