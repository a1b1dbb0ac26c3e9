"""Where a DAG run's wall time goes (issue 12, item 4: measurement only), read from the Airflow
metadata DB of a finished run: each task's duration, and for the Spark job tasks the job's own
stage timings (the metrics document the job pushed as its XCom return value).

Per job task: ``outside job`` = task duration - the job's ``total`` (spark-submit, the driver's
Python start and imports, Airflow's task start/stop); ``session + untimed`` = ``total`` - the
timed stages (JVM and SparkSession start, reading arguments, stopping Spark).

    source scripts/env.sh
    python bench/dag_breakdown.py                                   # latest successful nightly run
    python bench/dag_breakdown.py --dag-id spindle_nightly_books --run-id manual__...
"""

import argparse
import json
import os
import sqlite3
from datetime import datetime


def database_path():
    url = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    if not url.startswith("sqlite:///"):
        raise SystemExit("only a SQLite metadata DB is read here (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)")
    return url[len("sqlite:///") :]


def seconds_between(start, end):
    parse = datetime.fromisoformat
    return (parse(end) - parse(start)).total_seconds()


def breakdown(db, dag_id, run_id=None):
    """The run's wall time, and one dict per task that ran (duration, job stages)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    if run_id is None:
        row = conn.execute(
            "select run_id from dag_run where dag_id=? and state='success' order by start_date desc limit 1", (dag_id,)
        ).fetchone()
        if row is None:
            raise SystemExit(f"no successful run of {dag_id}")
        run_id = row[0]
    start, end = conn.execute(
        "select start_date, end_date from dag_run where dag_id=? and run_id=?", (dag_id, run_id)
    ).fetchone()
    tasks = []
    query = (
        "select task_id, start_date, end_date, duration from task_instance where dag_id=? and run_id=? "
        "and state='success' and duration > 0 order by start_date"
    )
    for task_id, task_start, task_end, duration in conn.execute(query, (dag_id, run_id)).fetchall():
        value = conn.execute(
            "select value from xcom where dag_id=? and run_id=? and task_id=? and key='return_value'",
            (dag_id, run_id, task_id),
        ).fetchone()
        metrics = json.loads(value[0]) if value else None
        stages = metrics.get("seconds") if isinstance(metrics, dict) and "job" in metrics else None
        tasks.append({"task": task_id, "start": task_start, "seconds": duration, "job_seconds": stages})
    return {"dag_id": dag_id, "run_id": run_id, "wall_seconds": seconds_between(start, end), "tasks": tasks}


def markdown(result):
    lines = [
        f"`{result['dag_id']}` run `{result['run_id']}`: {result['wall_seconds']:.1f} s wall",
        "",
        "| task | task s | job total s | timed stages (s) | session + untimed s | outside job s |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for task in result["tasks"]:
        stages = dict(task["job_seconds"] or {})
        total = stages.pop("total", None)
        if total is None:
            lines.append(f"| {task['task']} | {task['seconds']:.1f} | | | | |")
            continue
        timed = ", ".join(f"{k} {v:.1f}" for k, v in sorted(stages.items()))
        untimed = total - sum(stages.values())
        outside = task["seconds"] - total
        lines.append(
            f"| {task['task']} | {task['seconds']:.1f} | {total:.1f} | {timed} | {untimed:.1f} | {outside:.1f} |"
        )
    accounted = sum(t["seconds"] for t in result["tasks"])
    lines += [
        "",
        f"Tasks add up to {accounted:.1f} s; scheduling between them: {result['wall_seconds'] - accounted:.1f} s.",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dag-id", default="spindle_nightly_books")
    parser.add_argument("--run-id", default=None, help="default: the latest successful run")
    parser.add_argument("--db", default=None, help="SQLite file; default: from AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    args = parser.parse_args(argv)
    result = breakdown(args.db or database_path(), args.dag_id, args.run_id)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
