"""Spindle's assets in a real Airflow (the session's api-server, scheduler and dag-processor):
the REST API names their producer and the consumer DAG scheduled on "new book vectors", and the
asset's page in the browser draws that graph (screenshot ``asset-graph``; with
``SPINDLE_UI_SCREENSHOTS_TO_DOCS=1`` also ``docs/img/airflow-ui-asset-graph.png``)."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.support.ui import ADMIN_USER, CHROMIUM, CHROMIUM_ARGS, DOCS_IMG, browser_missing_reason, skip_or_fail

CONSUMER = "spindle_books_consumer"
TO_DOCS = os.environ.get("SPINDLE_UI_SCREENSHOTS_TO_DOCS") == "1"


@pytest.fixture(scope="module")
def page(artifacts):
    reason = browser_missing_reason()
    if reason:
        skip_or_fail(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900}, locale="en-US", timezone_id="UTC")
            context.set_default_timeout(30_000)
            yield context.new_page()
        finally:
            browser.close()


def test_asset_graph_names_the_producer_and_the_consumer(airflow_server, page, artifacts):
    server = airflow_server
    server.wait_for_dag(CONSUMER)
    found = server.api("GET", "/assets?name_pattern=spindle_book_vectors")["assets"]
    (asset,) = [a for a in found if a["name"] == "spindle_book_vectors"]
    producers = {(t["dag_id"], t["task_id"]) for t in asset["producing_tasks"]}
    assert producers == {("spindle_nightly_books", "load_vectors")}
    assert [d["dag_id"] for d in asset["scheduled_dags"]] == [CONSUMER]
    assert {(t["dag_id"], t["task_id"]) for t in asset["consuming_tasks"]} == {(CONSUMER, "report_new_version")}
    assert server.api("GET", f"/dags/{CONSUMER}")["is_paused"] is False  # it follows the nightly runs

    base = server.base_url
    page.goto(base + "/")
    page.wait_for_url("**/auth/login**")
    page.get_by_label("Username").fill(ADMIN_USER)
    page.get_by_label("Password").fill(server.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(base + "/")
    page.goto(f"{base}/assets/{asset['id']}")
    page.wait_for_load_state("networkidle")
    shot = artifacts / "asset-graph.png"
    try:  # the graph: producing DAG -> asset -> consuming DAG
        for text in ("spindle_book_vectors", "spindle_nightly_books", CONSUMER):
            page.get_by_text(text).first.wait_for()
    finally:
        page.screenshot(path=str(shot))
    if TO_DOCS:
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMG / "airflow-ui-asset-graph.png")
