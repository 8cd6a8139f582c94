"""THE parent-run lifecycle. A sweep (sweep.py), the DVC comparison (src/stages/compare.py) and the fair report
(src/fair/report_mlflow.py) each gather runs under one MLflow parent run; here is how, once:

- create: `ParentRun.create`, or `open_parent` as a `with` block that ends it FINISHED, FAILED on an
  exception, KILLED on Ctrl-C. A sweep spans Hydra callbacks, so it calls `end` itself (in a `finally`).
  Earlier parents are dealt with here too: a dead sweep's is taken over (`take_over`), a report's left
  without children is retired (`retire_childless`).
- adopt: `adopt` makes a run a child (`mlflow.parentRunId`), with tags such as its `setting`: MLflow's runs
  table folds children under their parent, and "Group by -> setting" draws each setting's mean and range.
  `adopt_run` does it knowing only the parent's id (a sweep job); `children_filter` finds the children.
- report: `log_texts` / `log_files` (the summary table, CSVs, figures) and `tag_best`.
- end: `end` (idempotent); `close_lost_children` first ends children still RUNNING whose process was lost,
  and `status_with_children` turns FINISHED into FAILED or KILLED when a child did. No run stays RUNNING.

What a parent logs is what a person reads on it, not what MLflow's own views already show: per-setting
means and ranges come from grouping the children by their `setting` tag, so a parent holds the summary
files, the tags naming the best, and two numbers a search can filter or sort on (`best_metrics`).
mlflow is imported inside functions, like everywhere in src/tracking.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.analysis.replicates import FINISHED, SELECT_METRIC, Comparison, Replicate

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the runs table nests a run under the run it names
SETTING_TAG = "setting"  # a child's setting label: MLflow's "Group by" groups the seeds of a setting by it
FAILED, KILLED = "FAILED", "KILLED"  # MLflow's end states besides FINISHED


def children_filter(parent_run_id: str) -> str:
    """The search filter that finds a parent's children."""
    return f"tags.{PARENT_TAG} = '{parent_run_id}'"


def ended_by(error: BaseException) -> str:
    """The status a run ends with when `error` stops it: KILLED for Ctrl-C, else FAILED."""
    return KILLED if isinstance(error, KeyboardInterrupt) else FAILED


def log_batched(
    client: MlflowClient,
    run_id: str,
    metrics: Mapping[str, float] | None = None,
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    history: Mapping[str, Sequence[float]] | None = None,
) -> None:
    """Log final metrics (step 0), per-epoch `history` (step = epoch, 0-based), params (cut to MLflow's
    length limit) and tags to `run_id` in as few calls as MLflow's per-call limits allow (1000 metrics, 100
    params, 100 tags a call): THE batching, so that no caller writes the chunk loop again. Non-finite values
    (a diverged run's) are left out: some stores refuse NaN; the run's diverged tag says why they are missing."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

    now = int(time.time() * 1000)
    series = [(key, step, value) for key, values in (history or {}).items() for step, value in enumerate(values)]
    series += [(key, 0, value) for key, value in (metrics or {}).items()]
    metric_list = [Metric(key, float(v), now, step) for key, step, v in series if math.isfinite(float(v))]
    param_list = [Param(key, str(value)[:MAX_PARAM_VAL_LENGTH]) for key, value in (params or {}).items()]
    tag_list = [RunTag(key, str(value)) for key, value in (tags or {}).items()]

    def chunks(items: list[Any], size: int) -> list[list[Any]]:
        return [items[start : start + size] for start in range(0, len(items), size)]

    batches = zip_longest(
        chunks(metric_list, MAX_METRICS_PER_BATCH),
        chunks(param_list, MAX_PARAMS_TAGS_PER_BATCH),
        chunks(tag_list, MAX_PARAMS_TAGS_PER_BATCH),
        fillvalue=[],
    )
    for some_metrics, some_params, some_tags in batches:
        client.log_batch(run_id, metrics=some_metrics, params=some_params, tags=some_tags)


def adopt_run(client: MlflowClient, run: Run, parent_run_id: str) -> None:
    """Make `run` a child of `parent_run_id` knowing only the parent's id (a sweep job adopting the finished
    run of its config, src/tracking/job.py); a run that moves from another parent keeps that one's id as
    the tag `previous_parent_run_id`."""
    previous = run.data.tags.get(PARENT_TAG)
    if previous == parent_run_id:
        return
    tags = {PARENT_TAG: parent_run_id} | ({"previous_parent_run_id": previous} if previous else {})
    log_batched(client, run.info.run_id, tags=tags)


def existing_runs(client: MlflowClient, run_ids: Iterable[str]) -> set[str]:
    """The ids among `run_ids` that this store holds: runs/ or fair/trials/ copied from elsewhere (`dvc pull`)
    name runs of another store, which a parent here cannot adopt."""
    from mlflow.exceptions import MlflowException

    found = set()
    for run_id in dict.fromkeys(run_ids):
        try:
            if run_id and client.get_run(run_id):
                found.add(run_id)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":  # an unreachable store is no answer: say so
                raise
    return found


def best_metrics(comparison: Comparison, best_child: Replicate | None) -> dict[str, float]:
    """The parent's numbers, the ones a search sorts or filters parents on (`metrics.best_setting_test_accuracy_mean
    > 0.97`): the best setting's mean of the verdict metric and the kept run's best validation accuracy. Every
    other statistic is in the parent's summary file, and per setting in MLflow's "Group by -> setting" view."""
    metrics: dict[str, float] = {}
    best_setting = comparison.setting(comparison.best)
    summary = best_setting.summaries.get(comparison.metric) if best_setting else None
    if summary is not None:
        metrics[f"best_setting_{comparison.metric}_mean"] = summary.mean
    if best_child is not None and best_child.value(SELECT_METRIC) is not None:
        metrics[SELECT_METRIC] = best_child.value(SELECT_METRIC)  # type: ignore[assignment]
    return metrics


@dataclass
class ParentRun:
    """One parent run in one experiment; `client` talks to its store."""

    client: MlflowClient
    run_id: str
    experiment_id: str
    ended: bool = False

    @classmethod
    def create(
        cls, experiment_id: str, run_name: str, tags: Mapping[str, str], client: MlflowClient | None = None
    ) -> ParentRun:
        """A new RUNNING parent run. The caller must `end` it (or use `open_parent`)."""
        from mlflow import MlflowClient

        client = client or MlflowClient()
        run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        return cls(client, run.info.run_id, experiment_id)

    def adopt(self, run_id: str, tags: Mapping[str, str] | None = None) -> None:
        """Make `run_id` a child of this parent (a run adopted from another parent moves here), with `tags`."""
        log_batched(self.client, run_id, tags={PARENT_TAG: self.run_id, **(tags or {})})

    def children(self) -> list[Run]:
        """Every child run, oldest first."""
        return self.client.search_runs(
            [self.experiment_id],
            children_filter(self.run_id),
            max_results=10000,
            order_by=["attributes.start_time ASC"],
        )

    def log_texts(self, files: Mapping[str, str]) -> None:
        """{artifact name: text}: files the parent shows in its Artifacts tab."""
        for name, text in files.items():
            self.client.log_text(self.run_id, text, name)

    def log_files(self, paths: Iterable[Path]) -> None:
        """Files, and folders (under their own name), as the parent's artifacts."""
        for path in paths:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))

    def tag_best(self, comparison: Comparison, best_child: Replicate | None = None, suffix: str = "") -> None:
        """Name the best on the parent: `best_setting` (the highest mean of the verdict metric),
        `best_resolved` (ahead of every other setting by a resolved difference), and with `best_child` (the
        run to keep, a child of this parent) `best_child_run_id` and `best_child_run_name`; then the numbers
        of `best_metrics`. `suffix` keeps several comparisons apart on one parent (the fair report's workloads)."""
        tags = {"best_resolved": str(comparison.best_resolved).lower()}
        if comparison.best:
            tags["best_setting"] = comparison.best
        if best_child is not None:
            tags["best_child_run_id"] = best_child.run_id
            tags["best_child_run_name"] = self.client.get_run(best_child.run_id).info.run_name or ""
        metrics = best_metrics(comparison, best_child)
        log_batched(
            self.client,
            self.run_id,
            metrics={f"{key}{suffix}": value for key, value in metrics.items()},
            tags={f"{key}{suffix}": value for key, value in tags.items()},
        )

    def close_lost_children(self, children: Sequence[Run], status: str) -> list[Run]:
        """`children` with every one still RUNNING ended FAILED (KILLED when the parent is killed) and tagged
        `lost`: its process or node died, and nothing else would end it. A rerun trains it again."""
        ended = []
        for child in children:
            if child.info.status == "RUNNING":
                why = "still RUNNING when its parent ended: its process or node was lost"
                self.client.set_tag(child.info.run_id, "lost", why)
                self.client.set_terminated(child.info.run_id, KILLED if status == KILLED else FAILED)
                child = self.client.get_run(child.info.run_id)
            ended.append(child)
        return ended

    def end(self, status: str = FINISHED) -> None:
        """End the parent with `status`; a second call does nothing."""
        if not self.ended:
            self.ended = True
            self.client.set_terminated(self.run_id, status)

    def take_over(self, search_filter: str) -> None:
        """Earlier parents matching `search_filter` still RUNNING (their process died: SIGKILL, power loss)
        end KILLED, tagged `resumed_by_parent_run_id` with this one, which adopts their children."""
        stale = self.client.search_runs(
            [self.experiment_id], f"{search_filter} and attributes.status = 'RUNNING'", max_results=1000
        )
        for run in stale:
            if run.info.run_id != self.run_id:
                self.client.set_tag(run.info.run_id, "resumed_by_parent_run_id", self.run_id)
                self.client.set_terminated(run.info.run_id, KILLED)

    def retire_childless(self, search_filter: str) -> None:
        """Delete (softly: `mlflow runs restore` brings one back) the earlier parents matching `search_filter`
        that this one left without children, tagged `superseded_by`. A parent that opens anew on every call
        (MLflow params cannot change) would otherwise leave one empty parent more each time; one that still
        has children (another protocol's, in the same experiment) is kept."""
        for old in self.client.search_runs([self.experiment_id], search_filter, max_results=1000):
            old_id = old.info.run_id
            if old_id == self.run_id or self.client.search_runs(
                [self.experiment_id], children_filter(old_id), max_results=1
            ):
                continue
            note = f"Superseded by the run {self.run_id}, which adopted every run of this one."
            log_batched(self.client, old_id, tags={"superseded_by": self.run_id, "mlflow.note.content": note})
            self.client.delete_run(old_id)


def status_with_children(status: str, children: Sequence[Run]) -> str:
    """A parent's final status: FAILED when it would finish but a child did not, KILLED when it failed and a
    child was killed (Ctrl-C reached the jobs first)."""
    statuses = {child.info.status for child in children}
    if status == FINISHED and statuses - {FINISHED}:
        status = FAILED
    if status == FAILED and KILLED in statuses:
        status = KILLED
    return status


@contextmanager
def open_parent(
    experiment_id: str, run_name: str, tags: Mapping[str, str], client: MlflowClient | None = None
) -> Iterator[ParentRun]:
    """A parent run for the block: FINISHED when it ends, FAILED when it raises, KILLED on Ctrl-C."""
    parent = ParentRun.create(experiment_id, run_name, tags, client)
    try:
        yield parent
    except BaseException as error:
        parent.end(ended_by(error))
        raise
    parent.end(FINISHED)
