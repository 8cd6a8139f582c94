"""The one parent-run lifecycle (src/tracking/parent.py) on a real MLflow SQLite store in tmp_path: batching
against MLflow's per-call limits, the status it ends with in every case, adopting, naming the best, taking
over a dead parent and retiring an empty one. No Keras: children are runs created here with the metrics a
training job logs. The three users (sweeps, the DVC comparison, the fair report) are tested in
tests/test_sweep_stats.py, tests/test_compare.py and tests/test_fair.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from src.analysis import replicates as rep
from src.tracking import parent as parent_run
from src.tracking.parent import ParentRun, log_batched, open_parent
from tests.conftest import store_with_tables


@pytest.fixture
def store(tmp_path: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(store_with_tables(tmp_path))
    return client, client.create_experiment("parents", artifact_location=(tmp_path / "artifacts").as_uri())


def child(client: MlflowClient, experiment_id: str, optimizer: str, seed: int, test: float, val: float) -> str:
    """A finished run with what a job logs at its end (the params and metrics the replicates read)."""
    run_id = client.create_run(experiment_id, run_name=f"optimizer={optimizer},train.seed={seed}").info.run_id
    metrics = {"test_accuracy": test, "best_val_accuracy": val, "best_epoch": 2.0, "stopped_epoch": 2.0}
    log_batched(client, run_id, metrics=metrics, params={"optimizer": optimizer, "train.seed": str(seed)})
    client.set_terminated(run_id, "FINISHED")
    return run_id


def test_log_batched_logs_more_than_one_call_of_mlflow_takes(store) -> None:
    client, experiment_id = store
    run_id = client.create_run(experiment_id).info.run_id
    metrics = {f"m{i}": float(i) for i in range(2500)}  # MLflow refuses more than 1000 metrics per log_batch
    params = {f"p{i}": str(i) for i in range(250)}  # and more than 100 params or tags
    tags = {f"t{i}": str(i) for i in range(250)}
    log_batched(client, run_id, metrics=metrics, params=params, tags=tags)
    data = client.get_run(run_id).data
    assert data.metrics == metrics and data.params == params and tags.items() <= data.tags.items()


@pytest.mark.parametrize(
    ("error", "status"), [(None, "FINISHED"), (ValueError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")]
)
def test_open_parent_never_leaves_the_parent_running(store, error: BaseException | None, status: str) -> None:
    client, experiment_id = store
    opened: list[ParentRun] = []
    try:
        with open_parent(experiment_id, "a comparison", {"sweep": "parent"}, client) as parent:
            opened.append(parent)
            assert client.get_run(parent.run_id).info.status == "RUNNING"
            if error is not None:
                raise error
    except (ValueError, KeyboardInterrupt) as raised:
        assert raised is error  # re-raised, not swallowed
    run = client.get_run(opened[0].run_id)
    assert run.info.status == status and run.data.tags["sweep"] == "parent"
    opened[0].end("FAILED")  # a second end changes nothing
    assert client.get_run(opened[0].run_id).info.status == status


def test_adopted_children_and_the_best_read_as_the_ui_groups_them(store) -> None:
    client, experiment_id = store
    values = {("adam", 1): (0.97, 0.96), ("adam", 2): (0.98, 0.97), ("sgd", 1): (0.90, 0.91), ("sgd", 2): (0.91, 0.9)}
    ids = {key: child(client, experiment_id, *key, *accuracies) for key, accuracies in values.items()}
    runs = [client.get_run(run_id) for run_id in ids.values()]
    comparison = rep.compare(rep.from_mlflow_run(run, ["optimizer"]) for run in runs)
    with open_parent(experiment_id, "optimizer=adam,sgd train.seed=1,2", {"sweep": "parent"}, client) as parent:
        for replicate in comparison.replicates:
            parent.adopt(replicate.run_id, {parent_run.SETTING_TAG: replicate.setting})
        parent.log_texts({"summary.md": "# the summary\n"})
        parent.tag_best(comparison, comparison.best_run())
    assert sorted(c.info.run_id for c in parent.children()) == sorted(ids.values())
    assert {c.data.tags["setting"] for c in parent.children()} == {"optimizer=adam", "optimizer=sgd"}
    found = client.get_run(parent.run_id)
    assert found.data.tags["best_setting"] == "optimizer=adam"
    assert found.data.tags["best_child_run_id"] == ids["adam", 2]
    assert found.data.tags["best_child_run_name"] == "optimizer=adam,train.seed=2"
    assert found.data.tags["best_resolved"] == str(comparison.best_resolved).lower()
    # two numbers a search filters or sorts parents on; every per-setting statistic is in the summary file
    assert found.data.metrics == {"best_setting_test_accuracy_mean": pytest.approx(0.975), "best_val_accuracy": 0.97}
    assert [a.path for a in client.list_artifacts(parent.run_id)] == ["summary.md"]
    # a search by the parent's number finds it, and only it
    hits = client.search_runs([experiment_id], "metrics.best_setting_test_accuracy_mean > 0.97")
    assert [hit.info.run_id for hit in hits] == [parent.run_id]


def test_a_child_still_running_is_ended_and_the_parent_says_it_failed(store) -> None:
    client, experiment_id = store
    parent = ParentRun.create(experiment_id, "a sweep", {"sweep": "parent"}, client)
    done = child(client, experiment_id, "adam", 1, 0.97, 0.96)
    lost = client.create_run(experiment_id).info.run_id  # its process died: nothing else will end it
    for run_id in (done, lost):
        parent.adopt(run_id)
    children = parent.close_lost_children(parent.children(), "FINISHED")
    assert {c.info.run_id: c.info.status for c in children} == {done: "FINISHED", lost: "FAILED"}
    assert "lost" in client.get_run(lost).data.tags
    assert parent_run.status_with_children("FINISHED", children) == "FAILED"
    parent.end(parent_run.status_with_children("FINISHED", children))
    assert client.get_run(parent.run_id).info.status == "FAILED"
    # Ctrl-C: a child still running ends KILLED, and so does a parent that failed with a killed child
    killed = client.create_run(experiment_id).info.run_id
    (ended,) = parent.close_lost_children([client.get_run(killed)], "KILLED")
    assert ended.info.status == "KILLED" and parent_run.status_with_children("FAILED", [ended]) == "KILLED"


def test_a_new_parent_takes_over_a_dead_one_and_retires_an_empty_one(store) -> None:
    client, experiment_id = store
    tags = {"sweep": "parent", "phase": "report"}
    dead = ParentRun.create(experiment_id, "killed by SIGKILL", tags, client)  # still RUNNING
    finished = ParentRun.create(experiment_id, "another protocol's", tags, client)
    finished.adopt(child(client, experiment_id, "sgd", 1, 0.9, 0.9))
    finished.end()
    new = ParentRun.create(experiment_id, "the rerun", tags, client)
    new.take_over("tags.sweep = 'parent'")
    run = client.get_run(dead.run_id)
    assert run.info.status == "KILLED" and run.data.tags["resumed_by_parent_run_id"] == new.run_id
    assert client.get_run(finished.run_id).info.status == "FINISHED"  # only RUNNING parents are taken over
    new.end()
    new.retire_childless("tags.phase = 'report'")
    # the dead parent had no child left: deleted (softly), naming its successor; the one with a child stays
    deleted = client.search_runs([experiment_id], "tags.phase = 'report'", ViewType.DELETED_ONLY)
    assert [(d.info.run_id, d.data.tags["superseded_by"]) for d in deleted] == [(dead.run_id, new.run_id)]
    active = {r.info.run_id for r in client.search_runs([experiment_id], "tags.phase = 'report'")}
    assert active == {finished.run_id, new.run_id}


def test_a_run_adopted_from_another_parent_names_it(store) -> None:
    client, experiment_id = store
    first, second = (ParentRun.create(experiment_id, name, {}, client) for name in ("first", "second"))
    run_id = child(client, experiment_id, "adam", 1, 0.97, 0.96)
    parent_run.adopt_run(client, client.get_run(run_id), first.run_id)
    parent_run.adopt_run(client, client.get_run(run_id), first.run_id)  # already its child: nothing changes
    assert "previous_parent_run_id" not in client.get_run(run_id).data.tags
    parent_run.adopt_run(client, client.get_run(run_id), second.run_id)
    tags = client.get_run(run_id).data.tags
    assert tags["mlflow.parentRunId"] == second.run_id and tags["previous_parent_run_id"] == first.run_id
    assert [c.info.run_id for c in second.children()] == [run_id] and first.children() == []


def test_existing_runs_leaves_out_ids_of_another_store(store) -> None:
    client, experiment_id = store
    here = client.create_run(experiment_id).info.run_id
    assert parent_run.existing_runs(client, [here, "0" * 32, ""]) == {here}
