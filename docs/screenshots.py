"""Screenshots of the MLflow UI for the README (`make screenshots`), taken from the real UI in headless Chromium.

Starts `mlflow ui` on a free localhost port against a store (default: the project's mlflow.db), finds the
latest DVC comparison's parent run (else the latest sweep's parent), and saves under docs/img/:

- mlflow_runs.png     the runs table in the "Model training" view with the parent row expanded
- mlflow_charts.png   the chart view: the children's val_accuracy curves overlaid
- mlflow_compare.png  the compare page that the end of a sweep and of `make run` print a link to
- mlflow_summary.png  the parent's summary artifact (summary.md of a sweep, comparison.md of `make run`)

    python -m docs.screenshots [--store sqlite:////path/mlflow.db | path/to/mlflow.db] [--out docs/img]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from src.infra.browser import launch, why_no_browser
from src.tracking.links import children_url, run_page_url, runs_table_url
from src.tracking.parent import children_filter

if TYPE_CHECKING:
    from collections.abc import Iterator

    from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parent.parent
UI_START_TIMEOUT_S = 180  # MLflow's UI takes ~10 s to start, over a minute on a busy 2-core machine
PAGE_TIMEOUT_MS = 90_000
VIEWPORT = {"width": 1440, "height": 900}
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost, whatever http_proxy says
CHARTS_SHOWN = "^val_accuracy$"  # the chart search takes a regular expression


def store_uri(store: str) -> str:
    """A tracking URI from `--store`: a URI as it is, a path as a SQLite store that must exist."""
    if "://" in store:
        return store
    path = Path(store).expanduser().resolve()
    if not path.is_file():
        sys.exit(f"error: --store={store}: no such file; run `make run` first, or pass a store that has runs")
    return f"sqlite:///{path}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_ui(tracking_uri: str, port: int) -> Iterator[str]:
    """`mlflow ui` on 127.0.0.1:`port` for as long as the block runs; yields its base URL."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sys.exit(f"error: --port={port} is already in use on 127.0.0.1; pick another port or leave --port out")
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow, "ui", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1"]  # one reader; MLflow's default of 4 uvicorn workers each import its server
    # MLflow 3's job runner (seven more processes) serves GenAI features this project does not use.
    environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with tempfile.TemporaryFile() as log:
        # Its own process group: uvicorn's workers end with it.
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )
        try:
            base_url = f"http://127.0.0.1:{port}/"
            deadline = time.monotonic() + UI_START_TIMEOUT_S
            while True:
                try:
                    with NO_PROXY.open(base_url + "health", timeout=5) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    sys.exit(f"error: mlflow ui did not start within {UI_START_TIMEOUT_S} s:\n{tail}")
                time.sleep(1)
            yield base_url
        finally:
            with suppress(ProcessLookupError):  # the group is gone already when the UI failed to start
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def latest_parent(tracking_uri: str):
    """The newest DVC comparison parent run, else the newest sweep parent."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
    for search_filter in ("tags.dvc_stage = 'compare'", "tags.sweep = 'parent'"):
        runs = client.search_runs(experiment_ids, search_filter, max_results=1, order_by=["attributes.start_time DESC"])
        if runs:
            return runs[0]
    sys.exit(f"error: no sweep or DVC comparison in {tracking_uri}; run `make run` or a sweep (`make sweep`) first")


def first_child(tracking_uri: str, parent) -> str:
    """Run id of one child of `parent`: its row appears once the parent row is expanded."""
    from mlflow import MlflowClient

    children = MlflowClient(tracking_uri).search_runs(
        [parent.info.experiment_id], children_filter(parent.info.run_id), max_results=1
    )
    if not children:
        sys.exit(f"error: parent run {parent.info.run_id} has no child runs to show")
    return children[0].info.run_id


def summary_artifact(tracking_uri: str, run_id: str) -> str | None:
    """The parent's report to show: summary.md (a sweep) or comparison.md (`make run`)."""
    from mlflow import MlflowClient

    names = [artifact.path for artifact in MlflowClient(tracking_uri).list_artifacts(run_id)]
    return next((name for name in ("summary.md", "comparison.md") if name in names), None)


def settle(page: Page) -> None:
    """Close MLflow's assistant side panel (it takes a third of the page) and let the page finish drawing."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    close = page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        close.first.click()
    # The UI polls for new runs, so the network never goes idle: each step waits for the element it
    # needs, then here for spinners to go (bounded) and charts to animate in.
    with suppress(PlaywrightTimeout):
        page.locator(".du-bois-light-spin").first.wait_for(state="hidden", timeout=15_000)
    page.wait_for_timeout(2000)


def take(base_url: str, tracking_uri: str, out: Path) -> list[Path]:
    """Open each view in Chromium and save its PNG; on a failure save the page as _failed.png and stop."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    parent = latest_parent(tracking_uri)
    parent_id, experiment_id = parent.info.run_id, parent.info.experiment_id
    parent_row = f'.ag-row:has(a[href$="/runs/{parent_id}"])'
    child_link = f'a[href$="/runs/{first_child(tracking_uri, parent)}"]'
    artifact = summary_artifact(tracking_uri, parent_id)
    out.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(PAGE_TIMEOUT_MS)

        def shoot(name: str) -> None:
            settle(page)
            saved.append(out / name)
            page.screenshot(path=saved[-1])

        step = "runs table"
        try:
            # 1. The runs table in the Model training view; the parent row expanded to show its children.
            page.goto(runs_table_url(base_url, experiment_id))
            page.locator(parent_row).first.wait_for()
            settle(page)
            page.locator(f'{parent_row} button[data-component-id*="runnamecellrenderer"]').first.click()
            page.locator(child_link).first.wait_for()
            shoot("mlflow_runs.png")

            # 2. The same runs as charts (the expanded parent's children): val_accuracy, full screen.
            step = "charts"
            page.locator('label:has(input[value="CHART"])').first.click()
            page.get_by_placeholder("Search metric charts").fill(CHARTS_SHOWN)
            settle(page)
            page.locator('[data-component-id="fullscreen_button_chartcard"]').first.click()  # a legend that fits
            page.get_by_role("dialog").first.wait_for()
            shoot("mlflow_charts.png")

            # 3. The compare page: the link printed at the end of a sweep and of `make run`.
            step = "compare page"
            page.goto(children_url(parent_id, tracking_uri, base_url))
            page.get_by_text("Run details").first.wait_for()
            shoot("mlflow_compare.png")

            # 4. The parent's report, in the run page's artifact viewer.
            if artifact:
                step = f"artifact {artifact}"
                page.goto(run_page_url(base_url, experiment_id, parent_id, artifact))
                page.get_by_text(artifact).first.wait_for()
                shoot("mlflow_summary.png")
        except PlaywrightError as error:
            page.screenshot(path=out / "_failed.png")
            sys.exit(
                f"error: screenshot of the {step} failed ({str(error).splitlines()[0]}); see {out / '_failed.png'}"
            )
        finally:
            browser.close()
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=str(ROOT / "mlflow.db"), help="tracking URI or SQLite file (mlflow.db)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"), help="folder for the PNGs")
    parser.add_argument("--port", type=int, default=0, help="port for mlflow ui (default: a free one)")
    parser.add_argument(
        "--ui", default="", help="use this running UI (e.g. http://127.0.0.1:5000/) instead of starting one"
    )
    args = parser.parse_args()
    problem = why_no_browser()
    if problem:
        sys.exit(f"error: no headless browser for the screenshots: {problem}")
    tracking_uri = store_uri(args.store)
    if args.ui:
        paths = take(args.ui.rstrip("/") + "/", tracking_uri, Path(args.out))
    else:
        with mlflow_ui(tracking_uri, args.port or free_port()) as base_url:
            paths = take(base_url, tracking_uri, Path(args.out))
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
