"""Seeds as replicates in Hydra sweeps: the parent's grouped summary, verdict, best and the children's setting tags.

The fast tests summarize MLflow Run entities built by hand (values chosen so the statistics can be checked
by hand); the slow ones run real sweeps (`python -m src.train -m ...`) into a real SQLite store.
"""

from __future__ import annotations

import csv
import io
import math
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag

from src.analysis import stats
from src.tracking.parent import ParentRun
from src.tracking.summary import summarize_sweep
from src.tracking.sweep import MlflowSweepCallback
from tests.conftest import SMALL, all_runs, run_main, store_args, store_with_tables

T_975_DF2 = 4.302652729911275  # Student's t quantile 0.975, 2 degrees of freedom (tables)
DONE_WHEN = ("optimizer=adam,rmsprop", "train.seed=1,2,3")


def make_run(
    number: int,
    optimizer: str,
    seed: int,
    test: float | None,
    status: str = "FINISHED",
    val: float | None = None,
    **tags: str,
) -> Run:
    """A child run as MLflow returns it; its best validation accuracy is `val`, else `test`."""
    info = RunInfo(f"run{number}", "0", "user", status, 0, 1, "active", run_name=f"{optimizer},{seed}")
    metrics = (
        [] if test is None else [Metric("test_accuracy", test, 0, 0), Metric("best_val_accuracy", val or test, 0, 0)]
    )
    metrics.append(Metric("best_epoch", float(seed), 0, 0))
    params = [Param("optimizer", optimizer), Param("train.seed", str(seed))]
    tags = [RunTag("job_num", str(number)), *(RunTag(key, value) for key, value in tags.items())]
    return Run(info, RunData(metrics=metrics, params=params, tags=tags))


def test_a_seeded_sweeps_summary_files() -> None:
    # The statistics are tested on replicates in tests/test_replicates.py; here: MLflow runs in, files out.
    runs = [
        make_run(0, "adam", 1, 0.97),
        make_run(1, "adam", 2, 0.96),
        make_run(2, "adam", 3, 0.98),
        make_run(3, "sgd", 1, 0.90),
        make_run(4, "sgd", 2, 0.93, status="FAILED"),  # logged its test accuracy, then failed: excluded
        make_run(5, "sgd", 3, 0.10, diverged="true"),  # finished, but diverged: excluded
        make_run(6, "sgd", 4, 0.91),
    ]
    summary = summarize_sweep(runs, ["optimizer", "train.seed"])
    assert summary.seeded and summary.keys == ["optimizer"]
    assert summary.comparison.best == "optimizer=adam" and summary.comparison.best_run().run_id == "run2"
    assert summary.setting_of("run5") == "optimizer=sgd"
    files = summary.files("optimizer=adam,sgd train.seed=1,2,3,4")
    assert sorted(files) == ["summary.csv", "summary.md", "summary_runs.csv"]
    markdown = files["summary.md"]
    assert "Runs grouped by setting: every swept key but `train.seed` (optimizer)." in markdown
    assert "| adam | 3 |  | 97.00 ± 1.00 |" in markdown
    assert "| sgd | 2 | seed 2 (failed), seed 3 (diverged) | 90.50 ± 0.71 |" in markdown
    assert "- optimizer=sgd vs optimizer=adam: -6.50 pp (95 % CI" in markdown
    assert (
        "Excluded from the statistics and from the best: optimizer=sgd seed 2 (failed), optimizer=sgd seed 3"
        in markdown
    )
    rows = list(csv.DictReader(io.StringIO(files["summary.csv"])))
    assert [(r["setting"], r["optimizer"], r["n"]) for r in rows] == [
        ("optimizer=adam", "adam", "3"),
        ("optimizer=sgd", "sgd", "2"),
    ]
    assert len(list(csv.DictReader(io.StringIO(files["summary_runs.csv"])))) == 7


def test_a_sweep_without_seeds_lists_its_runs() -> None:
    runs = [make_run(0, "adam", 1, 0.975, val=0.970), make_run(1, "rmsprop", 1, 0.974, val=0.980)]
    summary = summarize_sweep(runs, ["optimizer"])
    assert not summary.seeded and summary.comparison.best_run().run_id == "run1"
    files = summary.files("optimizer=adam,rmsprop")
    assert sorted(files) == ["summary.csv", "summary.md"]
    assert "| optimizer | n |" not in files["summary.md"]  # one row per run, no settings table
    assert "| adam | 1 | 97.50 | 97.00 | 1 | n/a | n/a | FINISHED | run0 |" in files["summary.md"]
    assert "Highest best validation accuracy: rmsprop,1 (98.00 %" in files["summary.md"]
    rows = list(csv.DictReader(io.StringIO(files["summary.csv"])))
    assert [(r["optimizer"], r["status"], r["test_accuracy"]) for r in rows] == [
        ("adam", "FINISHED", "0.975"),
        ("rmsprop", "FINISHED", "0.974"),
    ]


def test_a_parent_whose_summary_fails_ends_failed_not_running(tmp_path: Path) -> None:
    """The sweep callback's close on a real store, no Hydra: a child whose `job_num` is not a number stops
    the summary; the error reaches the user and the parent ends FAILED."""
    client = MlflowClient(store_with_tables(tmp_path))
    experiment_id = client.create_experiment("sweep", artifact_location=(tmp_path / "artifacts").as_uri())
    callback = MlflowSweepCallback()
    callback.parent = ParentRun.create(experiment_id, "optimizer=adam", {"sweep": "parent"}, client)
    run_id = client.create_run(experiment_id, tags={"job_num": "one"}).info.run_id
    callback.parent.adopt(run_id)
    client.set_terminated(run_id, "FINISHED")
    with pytest.raises(ValueError, match="one"):
        callback.close("FINISHED")
    assert client.get_run(callback.parent.run_id).info.status == "FAILED"
    callback.close("FINISHED")  # the atexit hook's second call changes nothing
    assert client.get_run(callback.parent.run_id).info.status == "FAILED"


# ---- real sweeps ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seed_sweep(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path):
    """The issue's Done-when command: 2 optimizers x 3 seeds, 2 epochs on 2000 images (in this process: the
    command line itself is tested by conftest's `optimizer_sweep` and tests/test_bad_input.py)."""
    folder = tmp_path_factory.mktemp("seeds")
    store_with_tables(folder)
    result = run_main("src.train", "-m", *DONE_WHEN, *SMALL, *store_args(folder, mnist_dir), cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, result


def parent_and_children(folder: Path, parent_run_id: str | None = None) -> tuple[Run, list[Run]]:
    runs = all_runs(folder)
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    parent = next(r for r in parents if r.info.run_id == parent_run_id) if parent_run_id else parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, sorted(children, key=lambda r: (r.data.params["optimizer"], int(r.data.params["train.seed"])))


def sweep_on_a_copy(seed_sweep, folder: Path, mnist_dir: Path, *arguments: str, prepare=None):
    """Run `python -m src.train -m <arguments>` (in this process) on a copy of the Done-when sweep's store in
    `folder` (its finished configs are adopted, not trained again); `prepare(client, children)` may edit the
    copy first.
    Returns (result, the new parent run, its children sorted by optimizer and seed)."""
    copy_store(seed_sweep[0], folder)
    if prepare is not None:
        prepare(MlflowClient(f"sqlite:///{folder}/mlflow.db"), parent_and_children(folder)[1])
    result = run_main("src.train", "-m", *arguments, *SMALL, *store_args(folder, mnist_dir), cwd=folder)
    parents = [r for r in all_runs(folder) if r.data.tags.get("sweep") == "parent"]
    parent = max(parents, key=lambda r: r.info.start_time)
    return result, parent, parent_and_children(folder, parent.info.run_id)[1]


def copy_store(source: Path, target: Path) -> None:
    """Another sweep on a copy of the store: finished configs are adopted, not trained again. (SQLite's
    backup, not a file copy: the store runs in WAL mode, recent writes may sit in mlflow.db-wal.)"""
    with (
        closing(sqlite3.connect(source / "mlflow.db")) as origin,
        closing(sqlite3.connect(target / "mlflow.db")) as copy,
    ):
        origin.backup(copy)


@pytest.mark.slow
def test_done_when_sweep_prints_the_grouped_summary_and_verdict(seed_sweep) -> None:
    _, result = seed_sweep
    out = result.stdout
    assert "Runs grouped by setting: every swept key but `train.seed` (optimizer)." in out
    for optimizer in ("adam", "rmsprop"):
        line = next(line for line in out.splitlines() if line.startswith(f"| {optimizer} | 3 |"))
        assert " ± " in line and " … " in line  # mean ± std, CI
    assert "## Verdict (test accuracy, each setting against the best)" in out
    assert "with 3 seeds (Welch's t-test, p = " in out
    assert out.count("| FINISHED |") == 6  # the per-seed table


def settings_rows(folder: Path) -> dict[str, dict[str, str]]:
    """summary.csv of the sweep written under `folder`/multirun, by setting (what the parent's artifact holds)."""
    rows = csv.DictReader(io.StringIO((folder / "multirun" / "summary.csv").read_text()))
    return {row["setting"]: row for row in rows}


@pytest.mark.slow
def test_parent_holds_the_summary_and_the_best_and_children_their_setting_tag(seed_sweep) -> None:
    folder, _ = seed_sweep
    parent, children = parent_and_children(folder)
    assert parent.info.status == "FINISHED" and len(children) == 6
    rows = settings_rows(folder)
    groups: dict[str, list[Run]] = {}
    for child in children:
        assert child.data.tags["setting"] == f"optimizer={child.data.params['optimizer']}"
        groups.setdefault(child.data.tags["setting"], []).append(child)
    for label, members in groups.items():
        test = [c.data.metrics["test_accuracy"] for c in members]
        mean = sum(test) / 3
        std = math.sqrt(sum((v - mean) ** 2 for v in test) / 2)
        row = rows[label]  # CSV numbers are rounded to 5 decimals
        assert row["n"] == "3"
        assert float(row["test_accuracy_mean"]) == pytest.approx(mean, abs=1e-5)
        assert float(row["test_accuracy_std"]) == pytest.approx(std, abs=1e-5)
        assert float(row["test_accuracy_ci_high"]) == pytest.approx(mean + T_975_DF2 * std / math.sqrt(3), abs=1e-5)
        val = [c.data.metrics["best_val_accuracy"] for c in members]
        assert float(row["best_val_accuracy_mean"]) == pytest.approx(sum(val) / 3, abs=1e-5)
        assert float(row["train_seconds_mean"]) > 0 and float(row["stopped_epoch_mean"]) == 2
    means = {label: sum(c.data.metrics["test_accuracy"] for c in members) / 3 for label, members in groups.items()}
    best = max(means, key=means.get)
    best_seed = max(groups[best], key=lambda c: c.data.metrics["best_val_accuracy"])
    tags = parent.data.tags
    assert tags["best_setting"] == best and tags["best_child_run_id"] == best_seed.info.run_id
    assert tags["best_child_run_name"] == best_seed.info.run_name
    other = [c.data.metrics["test_accuracy"] for label, ms in groups.items() if label != best for c in ms]
    resolved = stats.welch(other, [c.data.metrics["test_accuracy"] for c in groups[best]]).resolved
    assert tags["best_resolved"] == str(resolved).lower()
    # the parent's numbers: the two a search sorts parents on, not one chart per setting and statistic
    assert parent.data.metrics == {
        "best_setting_test_accuracy_mean": pytest.approx(means[best], abs=1e-12),
        "best_val_accuracy": best_seed.data.metrics["best_val_accuracy"],
    }


@pytest.mark.slow
def test_summary_files_hold_settings_and_seeds(seed_sweep) -> None:
    folder, _ = seed_sweep
    parent, _ = parent_and_children(folder)
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.md", "summary.csv", "summary_runs.csv"} <= names
    local = client.download_artifacts(parent.info.run_id, "summary.csv", str(folder / "download"))
    settings = list(csv.DictReader(io.StringIO(Path(local).read_text())))
    assert [(row["optimizer"], row["n"]) for row in settings] == [("adam", "3"), ("rmsprop", "3")]
    runs = list(csv.DictReader(io.StringIO((folder / "multirun" / "summary_runs.csv").read_text())))
    assert sorted((row["setting"], row["seed"]) for row in runs) == [
        (f"optimizer={optimizer}", str(seed)) for optimizer in ("adam", "rmsprop") for seed in (1, 2, 3)
    ]


@pytest.mark.slow
def test_a_failed_and_a_diverged_seed_are_excluded_and_the_others_reported(
    seed_sweep, tmp_path: Path, mnist_dir: Path
) -> None:
    marked: dict[str, Run] = {}

    def prepare(client: MlflowClient, children: list[Run]) -> None:
        # rmsprop's best seed (by validation accuracy) is marked diverged, as the divergence callback tags it
        marked["diverged"] = max(children[3:], key=lambda c: c.data.metrics["best_val_accuracy"])
        client.set_tag(marked["diverged"].info.run_id, "diverged", "true")
        client.delete_tag(children[0].info.run_id, "setting")  # as if trained before setting tags existed
        # Seed 4 is new for both; adam's (job 3) fails when it saves its last checkpoint, after its metrics.
        (tmp_path / "multirun" / "3" / "checkpoints" / "last.keras").mkdir(parents=True)

    result, parent, children = sweep_on_a_copy(
        seed_sweep, tmp_path, mnist_dir, "optimizer=adam,rmsprop", "train.seed=1,2,3,4", prepare=prepare
    )
    diverged = marked["diverged"]
    assert result.returncode != 0
    assert parent.info.status == "FAILED" and parent.data.tags["failed_jobs"] == "1"
    assert [c.info.status for c in children] == ["FINISHED"] * 3 + ["FAILED"] + ["FINISHED"] * 4
    assert all(c.data.tags["setting"] == f"optimizer={c.data.params['optimizer']}" for c in children)
    rows = settings_rows(tmp_path)
    assert rows["optimizer=adam"]["n"] == "3" and rows["optimizer=rmsprop"]["n"] == "3"
    counted = [c.data.metrics["test_accuracy"] for c in children[4:] if c.info.run_id != diverged.info.run_id]
    assert float(rows["optimizer=rmsprop"]["test_accuracy_mean"]) == pytest.approx(sum(counted) / 3, abs=1e-5)
    assert parent.data.tags["best_child_run_id"] not in (diverged.info.run_id, children[3].info.run_id)
    diverged_seed = diverged.data.params["train.seed"]
    assert "| adam | 3 | seed 4 (failed) |" in result.stdout
    assert f"| rmsprop | 3 | seed {diverged_seed} (diverged) |" in result.stdout
    assert f"optimizer=rmsprop seed {diverged_seed} (diverged)" in result.stdout


@pytest.mark.slow
def test_seeds_alone_are_one_group_and_adopted_runs_get_this_sweeps_setting(
    seed_sweep, tmp_path: Path, mnist_dir: Path
) -> None:
    result, parent, children = sweep_on_a_copy(seed_sweep, tmp_path, mnist_dir, "train.seed=1,2,3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| all | 3 |" in result.stdout and "Only one setting (all): nothing to compare." in result.stdout
    assert [c.data.params["optimizer"] for c in children] == ["adam"] * 3  # adopted, not trained again
    assert [c.data.tags["setting"] for c in children] == ["all"] * 3
    assert settings_rows(tmp_path)["all"]["n"] == "3" and parent.data.tags["best_resolved"] == "false"
    mean = sum(c.data.metrics["test_accuracy"] for c in children) / 3
    assert parent.data.metrics["best_setting_test_accuracy_mean"] == pytest.approx(mean, abs=1e-12)


@pytest.mark.slow
def test_one_seed_per_setting_names_no_winner(seed_sweep, tmp_path: Path, mnist_dir: Path) -> None:
    result, parent, children = sweep_on_a_copy(
        seed_sweep, tmp_path, mnist_dir, "optimizer=adam,rmsprop", "train.seed=2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "With one run per setting (n = 1) no difference between settings can be resolved" in result.stdout
    best = max(children, key=lambda c: c.data.metrics["best_val_accuracy"])
    assert parent.data.tags["best_child_run_id"] == best.info.run_id
    assert parent.data.tags["best_resolved"] == "false"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    local = client.download_artifacts(parent.info.run_id, "summary.csv", str(tmp_path / "download"))
    rows = list(csv.DictReader(io.StringIO(Path(local).read_text())))
    assert [(row["optimizer"], row["status"]) for row in rows] == [("adam", "FINISHED"), ("rmsprop", "FINISHED")]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ("train.seed=1,1,2", "repeats 1: give distinct integers"),
        ("train.seed=1.5,2", "holds 1.5, not a non-negative integer"),
        ("train.seed=range(1,1)", "holds no seed"),
    ],
    ids=["repeated", "not-an-integer", "empty"],
)
def test_bad_seeds_fail_with_one_line_before_any_run(tmp_path: Path, mnist_dir: Path, seeds: str, message: str) -> None:
    result = run_main(
        "src.train", "-m", "optimizer=adam,rmsprop", seeds, *SMALL, *store_args(tmp_path, mnist_dir), cwd=tmp_path
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0] and "train.seed" in error_lines[0], result.stderr
    assert "distinct integers" in error_lines[0]
    assert all_runs(tmp_path) == []


@pytest.mark.slow
def test_register_true_registers_the_best_settings_best_seed(seed_sweep, tmp_path: Path, mnist_dir: Path) -> None:
    # every job is adopted: the registration is all this sweep does
    arguments = (*DONE_WHEN, "mlflow.register=true", "mlflow.registered_model_name=sweep-best")
    result, parent, _ = sweep_on_a_copy(seed_sweep, tmp_path, mnist_dir, *arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (version,) = client.search_model_versions("name = 'sweep-best'")
    assert version.run_id == parent.data.tags["best_child_run_id"]
    assert version.tags["setting"] == parent.data.tags["best_setting"]
    assert "Registered sweep-best version 1" in result.stdout
