"""Follow and summarize Spindle's DAG runs from Airflow's metadata DB, for scripts/demo.sh.

    python scripts/summarize_runs.py run DAG_ID --log FILE [--conf JSON]
    python scripts/summarize_runs.py summary DAG_ID [DAG_ID ...]

``run`` starts ``airflow dags test DAG_ID`` with all of its output (Airflow's and Spark's logs)
going to FILE, and prints one line when a task starts and one when it ends, with its state,
seconds and figures (row counts from its metrics XCom), read from the metadata DB while the run
goes on. The tasks of the backends' lanes that the run did not choose are counted, not listed.
When a task fails, the end of its log follows. Exit status: 0 only when the run succeeded.

``summary``: per DAG, the latest run's state and time, its outputs, the vectors it loaded, and
whether its cluster is gone, checked against the machine itself (no process of the cluster
left), not taken from the delete task's word. Exits 1 when a run did not succeed or its
cluster is still alive. (``summarize_runs.py DAG_ID ...`` is ``summary``.)
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
from spindle.backends.registry import names as backend_names
from spindle.hooks.local_spark import LocalSparkClusterHook
from sqlalchemy import func
from sqlalchemy.exc import OperationalError

REPO = Path(__file__).resolve().parents[1]
LANES = backend_names()  # task groups of the cloud backends (spindle.backends.lanes)
DONE = {"success", "failed", "skipped", "upstream_failed", "removed", "up_for_retry"}
# Metric keys worth showing, in display order: (key, label).
COUNTS = (
    ("rows_read", "read"),
    ("rows_kept", "kept"),
    ("rows_filtered_out", "filtered out"),
    ("rows_quarantined", "quarantined"),
    ("rows_with_author", "with author"),
    ("rows_in", "in"),
    ("rows_embedded", "embedded"),
    ("rows_carried_over", "carried over"),
    ("rows_transformed", "transformed"),
    ("rows_skipped_null_text", "null text"),
)
POLL_SECONDS = 1.0
LOG_TAIL = 30
# Airflow's lines after a task's error: left out of the tail so that the error shows.
BOOKKEEPING = ("::group::", "::endgroup::", "Task instance state updated", "[DAG TEST] end task")


# --------------------------------------------------------------------------- reading the DB
def _xcom(session, ti: TaskInstance, key: str = "return_value"):
    row = (
        session.query(XComModel)
        .filter_by(dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, map_index=ti.map_index, key=key)
        .one_or_none()
    )
    return None if row is None else XComModel.deserialize_value(row)


def _seconds(ti: TaskInstance) -> float | None:
    if ti.duration is not None:
        return ti.duration
    if ti.start_date and ti.end_date:
        return (ti.end_date - ti.start_date).total_seconds()
    return None


def _short(path: str) -> str:
    """Paths under the repository, relative to it: shorter lines."""
    text = str(path)
    return text[len(str(REPO)) + 1 :] if text.startswith(str(REPO) + os.sep) else text


def figures(value) -> str:
    """A task's return value (metrics XCom) as one short line of figures."""
    if isinstance(value, str):
        return value if len(value) < 80 else ""  # e.g. create_cluster's cluster id
    if not isinstance(value, dict):
        return ""
    if "backend" in value and "chosen_by" in value:  # check_backend
        return f"backend {value['backend']}"
    if "enabled" in value and "reason" in value:  # check_covers
        return "covers on" if value["enabled"] else f"covers off: {value['reason']}"
    parts = [f"{label} {value[key]}" for key, label in COUNTS if value.get(key) is not None]
    if "images_embedded" in value:  # embed_images: failures counted per reason, never fatal
        reasons = ", ".join(f"{r} {n}" for r, n in sorted((value.get("failure_reasons") or {}).items()))
        parts.append(
            f"images embedded {value['images_embedded']}, failed {value['images_failed']}"
            + (f" ({reasons})" if reasons else "")
            + f", no image {value.get('rows_skipped_no_image', 0)}"
        )
    if value.get("latest_note"):  # embed_text wrote an empty version
        parts.append("latest.json not moved")
    if "loads" in value:  # load_vectors
        for load in value["loads"]:
            if "collection" in load:
                parts.append(f"{load['alias']}: {load['rows_upserted']} vectors")
            else:  # "no vector in <path>": the path is in the log
                why = str(load.get("skipped") or "").split(" in ")[0].split(" at ")[0]
                parts.append(f"{load['alias']}: skipped ({why})")
    return ", ".join(parts)


def _order(ti: TaskInstance) -> tuple[float, str]:
    when = ti.start_date or ti.end_date
    return (when.timestamp() if when else float("inf"), ti.task_id)


def _lane(task_id: str) -> str | None:
    group = task_id.split(".", 1)[0] if "." in task_id else None
    return group if group in LANES else None


# --------------------------------------------------------------------------- run + follow
class Follower:
    """Prints task starts and ends of the newest run of ``dag_id`` newer than ``after_id``."""

    def __init__(self, dag_id: str, after_id: int, log_file: Path):
        self.dag_id, self.after_id, self.log_file = dag_id, after_id, log_file
        self.run_id: str | None = None
        self.seen: dict[str, str] = {}
        self.lane_skips: set[str] = set()
        self.not_run: list[str] = []  # upstream_failed: listed once, at the end

    def poll(self) -> DagRun | None:
        try:
            with create_session() as session:
                run = (
                    session.query(DagRun)
                    .filter(DagRun.dag_id == self.dag_id, DagRun.id > self.after_id)
                    .order_by(DagRun.id.desc())
                    .first()
                )
                if run is None:
                    return None
                if self.run_id is None:
                    self.run_id = run.run_id
                    print(f"  run {run.run_id}")
                tis = sorted(run.get_task_instances(session=session), key=_order)
                for ti in tis:
                    self._event(session, ti)
                session.expunge(run)
                return run
        except OperationalError:  # SQLite busy while the run writes: next poll
            return None

    def _event(self, session, ti: TaskInstance) -> None:
        state = str(ti.state) if ti.state else "none"
        if self.seen.get(ti.task_id) == state:
            return
        self.seen[ti.task_id] = state
        if _lane(ti.task_id) and state in ("skipped", "upstream_failed"):
            self.lane_skips.add(ti.task_id)
            return
        if state == "upstream_failed":
            self.not_run.append(ti.task_id)
            return
        now = time.strftime("%H:%M:%S")
        if state == "running":
            print(f"  {now}  {ti.task_id:<16} started", flush=True)
        elif state in DONE:
            seconds = _seconds(ti)
            took = f"{seconds:6.1f} s" if seconds is not None else "        "
            shown = figures(_xcom(session, ti)) if state == "success" else ""
            if state == "skipped":
                shown = skip_reason(self.log_file, ti.task_id)
            print(f"  {now}  {ti.task_id:<16} {state:<8} {took}  {shown}".rstrip(), flush=True)


def _last_run_id(dag_id: str) -> int:
    with create_session() as session:
        return session.query(func.max(DagRun.id)).filter(DagRun.dag_id == dag_id).scalar() or 0


def task_section(log_file: Path, task_id: str) -> list[str]:
    """A task's lines in ``airflow dags test``'s output: from ``[DAG TEST] starting task_id=X``
    to ``[DAG TEST] end task task_id=X`` (its last try); [] when it never started."""
    start, end = f"[DAG TEST] starting task_id={task_id} ", f"[DAG TEST] end task task_id={task_id} "
    section: list[str] = []
    inside = False
    try:
        with open(log_file, errors="replace") as log:
            for line in log:
                if start in line:
                    section, inside = [], True
                if inside:
                    section.append(line.rstrip("\n"))
                    inside = end not in line
    except FileNotFoundError:
        pass
    return section


def skip_reason(log_file: Path, task_id: str) -> str:
    """Why a task skipped itself (AirflowSkipException's message), from its log section."""
    for line in task_section(log_file, task_id):
        if "Skipping task." in line and " reason=" in line:
            return line.split(" reason=", 1)[1].strip().strip("'\"")
    return ""


def print_failure(run: DagRun | None, log_file: Path) -> None:
    """The end of each failed task's log section (else the end of the whole log)."""
    failed = []
    if run is not None:
        with create_session() as session:
            failed = [ti.task_id for ti in run.get_task_instances(session=session) if str(ti.state) == "failed"]
    for task_id in failed or [None]:
        section = task_section(log_file, task_id) if task_id else []
        lines = [line for line in section if not any(marker in line for marker in BOOKKEEPING)]
        if not lines:
            lines = log_file.read_text(errors="replace").splitlines() if log_file.exists() else []
        print(f"  ---- {task_id or 'the run'}: last {min(LOG_TAIL, len(lines))} lines (all: {_short(log_file)}) ----")
        for line in lines[-LOG_TAIL:]:
            print("  | " + line[:200])


def run_dag(dag_id: str, log_file: Path, conf: str | None) -> int:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    follower = Follower(dag_id, _last_run_id(dag_id), log_file)
    command = ["airflow", "dags", "test", dag_id] + (["-c", conf] if conf else [])
    started = time.monotonic()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            while proc.poll() is None:
                follower.poll()
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
    run = follower.poll()
    if follower.not_run:
        print(f"  not run (an upstream task failed): {', '.join(follower.not_run)}")
    if follower.lane_skips:
        lanes = sorted({_lane(t) for t in follower.lane_skips})
        print(f"  ({len(follower.lane_skips)} tasks of the unchosen backend lanes not run: {', '.join(lanes)})")
    state = str(run.state) if run is not None else "no run found"
    print(f"  {dag_id}: {state} in {time.monotonic() - started:.0f} s (airflow dags test exit {proc.returncode})")
    if state != "success" or proc.returncode != 0:
        print_failure(run, log_file)
        return 1
    return 0


# --------------------------------------------------------------------------- summary
def summarize(session, dag_id: str) -> bool:
    run = session.query(DagRun).filter_by(dag_id=dag_id).order_by(DagRun.id.desc()).first()
    if run is None:
        print(f"\n{dag_id}: no run found")
        return False
    took = (run.end_date - run.start_date).total_seconds() if run.end_date and run.start_date else None
    tis = run.get_task_instances(session=session)
    ran = [ti for ti in tis if str(ti.state) not in ("skipped", "removed", "None")]
    skipped = [ti.task_id for ti in tis if str(ti.state) == "skipped" and not _lane(ti.task_id)]
    print(
        f"\n{dag_id}  {run.run_id}: {run.state}"
        + (f" in {took:.0f} s" if took else "")
        + f" ({len(ran)} tasks ran"
        + (f"; skipped: {', '.join(skipped)}" if skipped else "")
        + ")"
    )
    cluster_id, files, notes = None, [], []
    for ti in sorted(ran, key=lambda t: t.start_date or run.start_date):
        value = _xcom(session, ti)
        if ti.task_id == "create_cluster":
            cluster_id = value
        if not isinstance(value, dict):
            continue
        for name, path in (value.get("outputs") or {}).items():
            if not path:
                continue
            if "loads" in value:  # load_vectors: alias -> collection
                notes.append(f"  milvus alias {name} -> {path}")
            elif name not in ("quarantine", "latest", "drift_plot"):
                rows = _output_rows(name, value)
                files.append(
                    (str(path), "" if rows is None else f" ({rows})" if isinstance(rows, str) else f" ({rows} rows)")
                )
        if value.get("latest_note"):
            notes.append(f"  latest.json: {value['latest_note']}")
    folder = os.path.commonpath([path for path, _ in files]) if len(files) > 1 else None
    if folder:
        print(f"  outputs in {_short(folder)}/")
    for path, rows in files:
        print(f"    {os.path.relpath(path, folder)}{rows}" if folder else f"  output {_short(path)}{rows}")
    for note in notes:
        print(note)
    alive = LocalSparkClusterHook().cluster_processes(cluster_id) if cluster_id else []
    gone = "gone (no master or worker process left)" if not alive else f"STILL RUNNING: pids {alive}"
    print(f"  cluster {cluster_id}: {gone}")
    return str(run.state) == "success" and not alive


def _output_rows(name: str, metrics: dict):
    """Rows a job wrote to its output ``name``, from its metrics; None if it does not say."""
    if name == "books":
        return metrics.get("rows_kept")
    if name == "embeddings" and "images_embedded" in metrics:
        rows = metrics["images_embedded"] + metrics.get("images_failed", 0)
        return f"{rows} rows, {metrics['images_embedded']} with a vector"
    if name == "embeddings" and "rows_embedded" in metrics:
        return metrics["rows_embedded"] + metrics.get("rows_carried_over", 0)
    return metrics.get("rows_transformed") if name == "transformed" else None


def summary(dag_ids: list[str]) -> int:
    print("\n===== Spindle run summary =====")
    with create_session() as session:
        ok = [summarize(session, dag_id) for dag_id in dag_ids]
    return 0 if all(ok) else 1


def main(argv: list[str]) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    if argv and argv[0] not in ("run", "summary", "-h", "--help"):
        argv = ["summary", *argv]
    parser = argparse.ArgumentParser(prog="summarize_runs.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="airflow dags test DAG_ID, log to a file, print task lines")
    run.add_argument("dag_id")
    run.add_argument("--log", required=True, type=Path, help="file for all of airflow dags test's output")
    run.add_argument("--conf", help="run conf JSON (airflow dags test -c)")
    show = commands.add_parser("summary", help="the latest runs' outputs, vectors and clusters")
    show.add_argument("dag_ids", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run_dag(args.dag_id, args.log, args.conf)
    return summary(args.dag_ids)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
