"""The MLflow UI links printed at the end of a sweep and of `make run` (src/tracking/links.py), built from a
real SQLite store. That these URLs open the right views in MLflow 3.17's UI was checked in Chromium
(docs/screenshots.py opens the same URLs)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import pytest

from src.infra.browser import launch, why_no_browser
from src.tracking import links
from tests.conftest import store_with_tables


def query_of(url: str) -> dict[str, str]:
    """The parameters after the UI's hash route (`#/compare-runs?...`)."""
    fragment = urlparse(url).fragment
    return {key: values[0] for key, values in parse_qs(fragment.partition("?")[2]).items()}


@pytest.mark.parametrize(
    ("tracking_uri", "env", "expected"),
    [
        ("sqlite:////tmp/mlflow.db", {}, "http://127.0.0.1:5000/"),  # `make ui`'s defaults
        ("sqlite:////tmp/mlflow.db", {"MLFLOW_UI_HOST": "ui.lan", "MLFLOW_UI_PORT": "8080"}, "http://ui.lan:8080/"),
        ("sqlite:////tmp/mlflow.db", {"MLFLOW_UI_HOST": "0.0.0.0"}, "http://127.0.0.1:5000/"),  # `HOST=0.0.0.0 make ui`
        ("http://alice:s3cret@tracking:5001", {"MLFLOW_UI_PORT": "8080"}, "http://tracking:5001/"),  # the server's UI
        ("https://mlflow.example.org/team/", {}, "https://mlflow.example.org/team/"),
    ],
)
def test_ui_base_url_is_the_server_or_make_ui_and_never_carries_a_password(tracking_uri, env, expected):
    assert links.ui_base_url(tracking_uri, env) == expected


@pytest.fixture
def sweep(tmp_path):
    """A parent run with three children (and an unrelated run) in a fresh SQLite store."""
    from mlflow import MlflowClient

    uri = store_with_tables(tmp_path)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("links", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment_id, run_name="optimizer=adam,adagrad,rmsprop").info.run_id
    children = [  # distinct start times: runs created in the same millisecond would tie in start-time order
        client.create_run(
            experiment_id, run_name=name, start_time=1_000 + i, tags={"mlflow.parentRunId": parent}
        ).info.run_id
        for i, name in enumerate(("optimizer=adam", "optimizer=adagrad", "optimizer=rmsprop"))
    ]
    client.create_run(experiment_id, run_name="unrelated")
    return uri, experiment_id, parent, children


def test_children_url_opens_the_compare_page_of_exactly_the_children_in_the_model_training_view(sweep):
    uri, experiment_id, parent, children = sweep

    url = links.children_url(parent, uri, base_url="http://127.0.0.1:5123/")

    assert url.startswith("http://127.0.0.1:5123/#/compare-runs?")
    query = query_of(url)
    assert json.loads(query["runs"]) == children  # in the order they started: adam, adagrad, rmsprop
    assert json.loads(query["experiments"]) == [experiment_id]
    assert query["workflowType"] == "machine_learning"  # not MLflow 3's GenAI view


def test_too_many_children_link_the_runs_table_filtered_to_them(sweep, monkeypatch):
    uri, experiment_id, parent, _ = sweep
    monkeypatch.setattr(links, "MAX_COMPARED", 2)
    monkeypatch.delenv(links.UI_HOST_ENV, raising=False)  # `make test` exports make ui's HOST and PORT
    monkeypatch.delenv(links.UI_PORT_ENV, raising=False)

    url = links.children_url(parent, uri)

    assert url.startswith(f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?")
    query = query_of(url)
    assert query["searchFilter"] == f"tags.mlflow.parentRunId = '{parent}'"
    assert query["workflowType"] == "machine_learning"


@pytest.mark.slow
@pytest.mark.skipif(why_no_browser() is not None, reason=f"no headless browser: {why_no_browser()}")
def test_the_printed_link_opens_the_children_in_the_real_mlflow_ui(sweep):
    from playwright.sync_api import sync_playwright

    from docs.screenshots import free_port, mlflow_ui

    uri, _, parent, _ = sweep
    with mlflow_ui(uri, free_port()) as base_url, sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page()
            page.goto(links.children_url(parent, uri, base_url), timeout=120_000)
            page.get_by_text("Comparing 3 Runs from 1 Experiment").wait_for(timeout=120_000)  # a busy CI machine
            for name in ("optimizer=adam", "optimizer=adagrad", "optimizer=rmsprop"):
                assert page.get_by_text(name, exact=True).count() >= 1, name
            assert page.get_by_text("unrelated", exact=True).count() == 0
        finally:
            browser.close()
