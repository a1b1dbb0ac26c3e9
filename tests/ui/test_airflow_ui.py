"""The path a person takes through Airflow's UI, in a real headless Chromium (Debian's package,
driven by Playwright with an explicit executable path; no browser download):

log in -> DAG list -> the nightly DAG -> Trigger with the parameter form (a small row limit) ->
the run succeeds on a real local Spark cluster -> the embed task's "Spark UI" extra link is there
and points at the cluster that ran it (its master UI, the application's page) -> its "Spark
History" link opens the finished application on the History Server after the cluster is gone.

Screenshots go to ``test-artifacts/ui/``; with ``SPINDLE_UI_SCREENSHOTS_TO_DOCS=1`` also to
``docs/img/`` (the README's pictures; off by default so a test run leaves the checkout clean).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.support.ui import (
    ADMIN_USER,
    CHROMIUM,
    CHROMIUM_ARGS,
    DOCS_IMG,
    browser_missing_reason,
    skip_or_fail,
    spark_daemons,
)

DAG_ID = "spindle_nightly_books"
ROW_LIMIT = 200  # of the 1000-line sample: a few dozen books survive the filters
TO_DOCS = os.environ.get("SPINDLE_UI_SCREENSHOTS_TO_DOCS") == "1"


@pytest.fixture(scope="module")
def browser():
    reason = browser_missing_reason()
    if reason:
        skip_or_fail(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, artifacts):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, locale="en-US", timezone_id="UTC")
    context.set_default_timeout(30_000)
    context.tracing.start(screenshots=True, snapshots=True)
    page = context.new_page()
    try:
        yield page
    finally:
        context.tracing.stop(path=str(artifacts / "trace.zip"))  # npx playwright show-trace ...
        context.close()


class Shots:
    """Numbered screenshots in test-artifacts/ui/ (and docs/img/ when asked)."""

    def __init__(self, page, folder: Path) -> None:
        self.page, self.folder, self.taken = page, folder, []

    def __call__(self, name: str, docs: bool = False, **kwargs) -> Path:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), **kwargs)
        self.taken.append(path)
        if docs and TO_DOCS:
            DOCS_IMG.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOCS_IMG / f"airflow-ui-{name}.png")
        return path


def _xcom(server, run_id: str, task_id: str, key: str):
    run = urllib.parse.quote(run_id, safe="")
    return server.api("GET", f"/dags/{DAG_ID}/dagRuns/{run}/taskInstances/{task_id}/xcomEntries/{key}")["value"]


def _task_log_tail(server, run_id: str, task_id: str, attempt: int | None = None, lines: int = 40) -> str:
    """The end of a task's log file (the last attempt unless one is named), for a failure message
    that says why without a trip to the artifacts."""
    folder = server.airflow_home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={task_id}"
    logs = sorted(folder.glob("attempt=*.log"), key=lambda p: int(p.stem.split("=")[1]))
    if attempt is not None:
        logs = [log for log in logs if log.stem == f"attempt={attempt}"]
    if not logs:
        return f"--- {task_id}: no log under {folder}"
    tail = logs[-1].read_text(errors="replace").splitlines()[-lines:]
    return f"--- {task_id} ({logs[-1].name}):\n" + "\n".join(tail)


def _screenshot_spark_ui_while_embedding(server, page, shot, run_id: str, timeout: float = 420) -> Path | None:
    """While embed_text runs, the cluster is up: take a picture of what the "Spark UI" link
    opens (the master UI with the running application). Best effort: None if the moment passed."""
    run = urllib.parse.quote(run_id, safe="")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tis = server.api("GET", f"/dags/{DAG_ID}/dagRuns/{run}/taskInstances")["task_instances"]
        states = {ti["task_id"]: ti["state"] for ti in tis}
        if states.get("embed_text") == "running":
            break
        if states.get("embed_text") in ("success", "failed", "upstream_failed", "skipped"):
            return None
        time.sleep(2)
    else:
        return None
    try:
        ui_url = _xcom(server, run_id, "create_cluster", "ui_url")
        page.goto(ui_url)
        page.get_by_text("Running Applications").first.wait_for(timeout=10_000)
        path = shot("spark-master-ui", docs=True, full_page=True)
    except Exception as err:  # noqa: BLE001 - the cluster may be gone already: no picture then
        print(f"no Spark master UI screenshot: {err}")
        path = None
    page.goto("about:blank")
    return path


def test_trigger_nightly_dag_from_the_ui_and_follow_the_spark_ui_link(airflow_server, page, artifacts):
    server, base = airflow_server, airflow_server.base_url
    for old in artifacts.glob("*.png"):
        old.unlink()
    shot = Shots(page, artifacts)

    # 1. Log in (SimpleAuthManager's own login page).
    page.goto(base + "/")
    page.wait_for_url("**/auth/login**")
    page.get_by_label("Username").fill(ADMIN_USER)
    page.get_by_label("Password").fill(server.password)
    shot("login")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(base + "/")

    # 2. The DAG list shows both Spindle DAGs; open the nightly one.
    page.get_by_role("link", name="Dags", exact=True).first.click()
    dag_link = page.get_by_role("link", name=DAG_ID, exact=True)
    dag_link.wait_for()
    page.get_by_role("link", name="spindle_llm_transform", exact=True).wait_for()
    page.wait_for_load_state("networkidle")
    shot("dag-list", docs=True)
    dag_link.click()
    page.wait_for_url(f"{base}/dags/{DAG_ID}")
    page.get_by_role("heading", name=DAG_ID, level=2).wait_for()

    # 3. Trigger with the parameter form: a small row limit, everything else as it is.
    page.get_by_role("button", name="Trigger Dag").click()
    dialog = page.get_by_role("dialog")
    limit = dialog.get_by_role("spinbutton", name="Row limit")
    limit.fill(str(ROW_LIMIT))
    limit.blur()
    shot("trigger-form", docs=True)
    with page.expect_response(
        lambda r: r.url.endswith(f"/api/v2/dags/{DAG_ID}/dagRuns") and r.request.method == "POST"
    ) as created:
        dialog.get_by_role("button", name="Trigger", exact=True).click()
    assert created.value.status == 200, created.value.text()
    run = created.value.json()
    run_id = run["dag_run_id"]
    assert run["conf"]["limit"] == ROW_LIMIT and run["triggered_by"] == "ui"

    # 4. Wait for the run (REST; a UI page left open polls the API and costs the run CPU),
    #    then look at the finished run.
    page.goto("about:blank")
    master_ui_shot = _screenshot_spark_ui_while_embedding(server, page, shot, run_id)
    finished = server.wait_for_run(DAG_ID, run_id, timeout=420)
    run_url = f"{base}/dags/{DAG_ID}/runs/{urllib.parse.quote(run_id, safe='')}"
    page.goto(run_url)
    page.wait_for_load_state("networkidle")
    shot("run-finished", docs=True)
    tis = server.api("GET", f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances")
    retried = {t["task_id"]: t["try_number"] for t in tis["task_instances"] if t["try_number"] > 1}
    if finished["state"] != "success":
        states = {t["task_id"]: t["state"] for t in tis["task_instances"] if t["state"] != "skipped"}
        failed = [task for task, state in states.items() if state == "failed"]
        pytest.fail(
            f"run {run_id} ended {finished['state']}: {states} (task logs: {artifacts}/logs/airflow)\n"
            + "\n".join(_task_log_tail(server, run_id, task) for task in failed)
        )

    # 5. Open the embed task: its "Spark UI" extra link, in the Details tab.
    page.locator(f'a[href="/dags/{DAG_ID}/runs/{run_id}/tasks/embed_text"]').first.click()  # grid cell
    page.wait_for_url("**/tasks/embed_text")
    page.get_by_role("heading", name="embed_text", level=2).wait_for()
    page.locator('a[href$="/tasks/embed_text/details"]').click()
    link = page.get_by_role("link", name="Spark UI", exact=True)
    link.wait_for()
    href = link.get_attribute("href")
    shot("embed-task-spark-ui-link", docs=True)

    # 6. The link points at the cluster that ran the task.
    cluster_id = _xcom(server, run_id, "create_cluster", "return_value")
    cluster_ui = _xcom(server, run_id, "create_cluster", "ui_url")
    app_id = _xcom(server, run_id, "embed_text", "spark_app_id")
    rest_links = server.api(
        "GET", f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/embed_text/links"
    )["extra_links"]
    state = json.loads((server.clusters_dir / cluster_id / "state.json").read_text())
    assert rest_links.get("Spark UI") == href
    assert app_id and app_id.startswith("app-")
    assert href == f"{cluster_ui}/app/?appId={app_id}", (href, cluster_ui, app_id)
    assert state["ui_url"] == cluster_ui and state["cluster_id"] == cluster_id
    assert state["status"] == "DELETED", "the teardown did not delete the cluster"
    assert not spark_daemons(server.root), "the run left Spark daemons behind"

    # The job did real work: books kept and embedded.
    prepared = _xcom(server, run_id, "prepare_books", "return_value")
    embedded = _xcom(server, run_id, "embed_text", "return_value")
    record = {
        "run": finished,
        "link": href,
        "prepare": prepared,
        "embed": embedded,
        "retried": retried,
        "first_try_logs": {task: _task_log_tail(server, run_id, task, attempt=1) for task in retried},
        "spark_master_ui_screenshot": str(master_ui_shot),
    }
    (artifacts / "run.json").write_text(json.dumps(record, indent=2, default=str))
    assert page.get_by_text("Success").first.is_visible()

    # 6b. The "Spark History" link: the finished application on the History Server, which replays
    #     the event log the run kept under the warehouse, now that the cluster is deleted.
    history = page.get_by_role("link", name="Spark History", exact=True)
    history_href = history.get_attribute("href")
    assert rest_links.get("Spark History") == history_href
    assert history_href == f"{server.history_url}/history/{app_id}/jobs/", history_href
    shot("embed-task-spark-history-link", docs=True)
    if history.get_attribute("target") == "_blank":  # the UI opens extra links in a new tab
        with page.context.expect_page() as opened:
            history.click()
        shot.page = opened.value
    else:
        history.click()
    shot.page.wait_for_url(history_href + "**")
    shot.page.get_by_text("Completed Jobs").first.wait_for(timeout=60_000)
    # the application's own page (Spark shortens a long app name in the title to 32 characters)
    assert shot.page.title().startswith("spindle.") and "Spark Jobs" in shot.page.title(), shot.page.title()
    shot("spark-history-after-teardown", docs=True, full_page=True)
    if shot.page is not page:
        shot.page.close()
        shot.page = page

    # 7. The task log shows Spark's progress at a steady interval while the job ran, and is
    #    readable in the UI.
    log_lines = server.task_log(DAG_ID, run_id, "embed_text")
    progress = [line for line in log_lines if line.startswith(f"Spark progress {app_id}: ")]
    (artifacts / "embed_text-progress.txt").write_text("\n".join(progress) + "\n")
    assert len(progress) >= 2, f"fewer than 2 progress lines in the embed_text log: {progress}"
    assert any(re.search(r"stage \d+: tasks \d+/\d+ done", line) for line in progress), progress
    assert all("rows/s" in line for line in progress)
    seconds = [int(re.search(r"\| (\d+) s$", line).group(1)) for line in progress]
    gaps = [b - a for a, b in itertools.pairwise(seconds)]
    assert gaps and max(gaps) <= 3 * 3 + 3, f"progress lines were not steady (every ~3 s): {seconds}"
    page.locator('a[href$="/tasks/embed_text"]', has_text="Logs").click()
    page.get_by_text(f"Spark application {app_id}").first.wait_for()  # the log's last line
    search = page.get_by_placeholder("Search logs")
    if search.count():
        search.fill("Spark progress")
        page.keyboard.press("Enter")
        page.wait_for_timeout(1000)
    shot("embed-task-log", docs=True)
