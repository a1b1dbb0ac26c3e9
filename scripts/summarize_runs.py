"""Print a readable summary of the latest run of each given DAG, read from Airflow's metadata DB.

Rows read / kept / quarantined / embedded / transformed come from the jobs' metrics (their XCom
return values), stage times from the task instances, and "cluster gone" is checked against the
machine itself (no process of the cluster left), not taken from the delete task's word.
Exits 1 when a run did not succeed or its cluster is still alive.
"""

from __future__ import annotations

import sys

from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
from spindle.hooks.local_spark import LocalSparkClusterHook

# Metric keys worth a line, in display order; a job prints those it has.
COUNT_KEYS = (
    "rows_read", "rows_kept", "rows_filtered_out", "rows_quarantined",
    "rows_in", "rows_embedded", "rows_carried_over", "rows_transformed", "rows_skipped_null_text", "rows_upserted",
)


def _xcom(session, ti: TaskInstance, key: str = "return_value"):
    row = (
        session.query(XComModel)
        .filter_by(dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, map_index=ti.map_index, key=key)
        .one_or_none()
    )
    return None if row is None else XComModel.deserialize_value(row)


def summarize(session, dag_id: str) -> bool:
    run = session.query(DagRun).filter_by(dag_id=dag_id).order_by(DagRun.id.desc()).first()
    if run is None:
        print(f"\n{dag_id}: no run found")
        return False
    print(f"\n{dag_id}  run {run.run_id}: {run.state}")
    tis = sorted(run.get_task_instances(session=session), key=lambda ti: ti.start_date or run.start_date)
    cluster_id = None
    for ti in tis:
        seconds = f"{ti.duration:7.1f} s" if ti.duration is not None else "      -  "
        print(f"  {ti.task_id:<20} {str(ti.state):<9} {seconds}")
        value = _xcom(session, ti)
        if ti.task_id == "create_cluster":
            cluster_id = value
        if isinstance(value, dict):
            _print_metrics(value)
    alive = LocalSparkClusterHook().cluster_processes(cluster_id) if cluster_id else []
    gone = "gone (no master or worker process left)" if not alive else f"STILL RUNNING: pids {alive}"
    print(f"  cluster {cluster_id}: {gone}")
    return str(run.state) == "success" and not alive


def _print_metrics(metrics: dict) -> None:
    counts = ", ".join(f"{key[5:]} {metrics[key]}" for key in COUNT_KEYS if key in metrics)
    if counts:
        print(f"      rows: {counts}")
    reasons = {reason: n for reason, n in (metrics.get("quarantine_reasons") or {}).items() if n}
    if reasons:
        print("      quarantined for: " + ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items())))
    if "images_embedded" in metrics:  # embed_images: failures are counted per reason, never fatal
        failed = ", ".join(f"{r} {n}" for r, n in sorted((metrics.get("failure_reasons") or {}).items()))
        print(f"      images: embedded {metrics['images_embedded']}, failed {metrics['images_failed']}"
              + (f" ({failed})" if failed else "") + f", rows without image {metrics.get('rows_skipped_no_image', 0)}")
    stages = metrics.get("seconds") or {}
    if stages:
        print("      stages: " + ", ".join(f"{name} {sec:.1f} s" for name, sec in stages.items()))
    for name, path in sorted((metrics.get("outputs") or {}).items()):
        print(f"      {name}: {path}")


def main(dag_ids: list[str]) -> int:
    print("\n===== Spindle run summary =====")
    with create_session() as session:
        ok = [summarize(session, dag_id) for dag_id in dag_ids]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
