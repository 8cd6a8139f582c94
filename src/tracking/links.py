"""Links into the MLflow UI: printed at the end of a sweep and of the DVC `compare` stage.

Checked in a real browser against MLflow 3.17's UI:
- An experiment opens in the GenAI view unless the URL says `workflowType=machine_learning` (the
  "Model training" switch at the top left of the sidebar).
- A sweep or comparison is one collapsed parent row in the runs table; no URL parameter expands it
  (`runsExpanded` is kept in the browser, and a shared view leaves it out), and a `searchFilter` on
  `tags.mlflow.parentRunId` still shows the children folded under their parent, charts included.
- The compare page (`#/compare-runs?runs=[...]&experiments=[...]`) shows the children side by side: their
  params and metrics, and each metric's curves overlaid one click away. So that is the link.

Where the UI is: a tracking server (`http(s)://` URI) serves it itself; for a local store it is `make ui`,
on MLFLOW_UI_HOST:MLFLOW_UI_PORT (127.0.0.1:5000 unless set; `make run`/`make sweep` set them from the
Makefile's HOST and PORT, so the link matches `make ui HOST=... PORT=...`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from urllib.parse import quote, urlencode, urlparse

from src.tracking.parent import children_filter

UI_HOST_ENV, UI_PORT_ENV = "MLFLOW_UI_HOST", "MLFLOW_UI_PORT"
DEFAULT_UI_HOST, DEFAULT_UI_PORT = "127.0.0.1", "5000"
MODEL_TRAINING = {"workflowType": "machine_learning"}  # the "Model training" view, not GenAI
MAX_COMPARED = 50  # more runs than this make a URL too long to paste: link the filtered runs table instead


def ui_base_url(tracking_uri: str, env: Mapping[str, str] = os.environ) -> str:
    """Root URL of the UI that shows the runs of `tracking_uri` (never with a password in it)."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme in ("http", "https") and parsed.hostname:
        host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
        netloc = f"{host}:{parsed.port}" if parsed.port else host
        return f"{parsed.scheme}://{netloc}{parsed.path.rstrip('/')}/"
    host = env.get(UI_HOST_ENV) or DEFAULT_UI_HOST
    if host in ("0.0.0.0", "::"):  # listening everywhere: this machine reaches it on localhost
        host = "127.0.0.1"
    return f"http://{host}:{env.get(UI_PORT_ENV) or DEFAULT_UI_PORT}/"


def _query(params: Mapping[str, str]) -> str:
    return urlencode({**params, **MODEL_TRAINING}, quote_via=quote)


def compare_runs_url(base_url: str, experiment_id: str, run_ids: list[str]) -> str:
    """The UI's compare page for `run_ids`: params and metrics side by side, curves a click away."""
    runs = json.dumps(run_ids, separators=(",", ":"))
    return f"{base_url}#/compare-runs?{_query({'runs': runs, 'experiments': json.dumps([experiment_id])})}"


def runs_table_url(base_url: str, experiment_id: str, search_filter: str = "", charts: bool = False) -> str:
    """The experiment's runs table in the Model training view, optionally filtered or as charts."""
    params = {"searchFilter": search_filter} if search_filter else {}
    if charts:
        params["compareRunsMode"] = "CHART"
    return f"{base_url}#/experiments/{experiment_id}/runs?{_query(params)}"


def run_page_url(base_url: str, experiment_id: str, run_id: str, artifact: str = "") -> str:
    """A run's page in the Model training view; with `artifact`, that file open in the artifact viewer."""
    tab = f"/artifacts/{quote(artifact)}" if artifact else ""
    return f"{base_url}#/experiments/{experiment_id}/runs/{run_id}{tab}?{_query({})}"


def children_url(parent_run_id: str, tracking_uri: str | None = None, base_url: str | None = None) -> str:
    """URL that opens the children of a sweep's or comparison's parent run (the compare page), or the
    runs table filtered to them when there are too many to compare. `base_url`: a UI started elsewhere."""
    from mlflow import MlflowClient, get_tracking_uri

    tracking_uri = tracking_uri or get_tracking_uri()
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    search_filter = children_filter(parent_run_id)
    children = client.search_runs(
        [experiment_id], search_filter, max_results=MAX_COMPARED + 1, order_by=["attributes.start_time ASC"]
    )
    base_url = base_url or ui_base_url(tracking_uri)
    if not children or len(children) > MAX_COMPARED:
        return runs_table_url(base_url, experiment_id, search_filter)
    return compare_runs_url(base_url, experiment_id, [child.info.run_id for child in children])
