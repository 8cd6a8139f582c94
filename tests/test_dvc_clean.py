"""Bytecode is not a change: once Python has written __pycache__/ (and legacy *.pyc files) into every source
folder, as `make test` and `make run` do, `dvc status` of every pipeline says exactly what it said before.

The bug this guards (issue 24, item 5): a stage depending on the folder src/tracking hashed its __pycache__/,
so after `make test` every tune stage of fair/dvc.yaml was "modified" and `make fair` reran them all. The stages
now depend on files, and .dvcignore skips bytecode; this test checks both in a copy of the checkout:

1. the checkout's tracked and new files are copied (no outputs, no bytecode) and a probe stage is added that
   depends on the source folders themselves, as a stage once did;
2. every stage's lock entry is brought up to date with the copy's files (the committed locks may lag behind
   an edit of the sources: a stale lock says "modified" before and after, and would hide the bug);
3. `dvc status` (every dvc.yaml of the repository: the root pipeline, fair/dvc.yaml and the probe) is taken,
   bytecode is written by an import and by compileall, and `dvc status` must be the same, with no source
   reported changed;
4. an edit of a source file must then be reported by every stage that depends on it, in both pipelines and
   the probe: the status does see a change when there is one.

Needs no data, runs or MLflow store: the stages whose data is missing report it the same way each time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from src.training.config import PROJECT_ROOT

SOURCE_FOLDERS = ("src", "hydra_plugins")
PROBE = "probe/dvc.yaml:bytecode-probe"
PROBE_YAML = """\
stages:
  bytecode-probe: # depends on the source folders themselves, as a stage once did
    wdir: ..
    cmd: "true"
    deps: [src, hydra_plugins]
"""
EDITED = "src/__init__.py"  # every stage runs a module of the package: each one depends on it


def _environment() -> dict[str, str]:
    """Python writes bytecode into the source folders, and DVC neither phones home nor checks for updates."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "DVC_"))}
    return {**environment, "DVC_NO_ANALYTICS": "1"}


def _copy_checkout(destination: Path, site_cache: Path) -> None:
    """The checkout's tracked files and new ones (not ignored), as they are now, in a git repository of their own."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = PROJECT_ROOT / name
        if source.is_file():  # a tracked file deleted in the checkout is left out, as it is there
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    subprocess.run(["git", "init", "-q"], cwd=destination, check=True, timeout=60)
    (destination / "probe").mkdir()
    (destination / "probe" / "dvc.yaml").write_text(PROBE_YAML)
    # DVC's hash cache and index go under tmp_path, not /var/tmp/dvc
    settings = f"[core]\n    analytics = false\n    check_update = false\n    site_cache_dir = {site_cache}\n"
    (destination / ".dvc" / "config.local").write_text(settings)


def _refresh_locks(root: Path) -> dict[str, set[str]]:
    """Write every stage's lock entry from the files as they are (what `dvc commit --force` writes, tolerating
    the data and outputs a copy lacks); return each stage's dependencies, as paths from the root."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stages = list(repo.index.stages)
        for stage in stages:
            stage.save(allow_missing=True, run_cache=False)
        files = {stage.dvcfile.path: stage.dvcfile for stage in stages}
        for path, dvcfile in files.items():
            dvcfile.dump_stages([stage for stage in stages if stage.dvcfile.path == path], update_pipeline=False)
        return {_address(root, stage): {_relative(root, dep.fs_path) for dep in stage.deps} for stage in stages}


def _relative(root: Path, path: str) -> str:
    return Path(path).relative_to(root).as_posix()


def _address(root: Path, stage) -> str:
    """The stage's name as `dvc status` run at the root prints it: `train@adam`, `fair/dvc.yaml:tune@sgd-mlp`."""
    dvcfile = _relative(root, stage.dvcfile.path)
    return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"


def _dvc_status(root: Path) -> dict:
    """`dvc status --json` of every pipeline of the repository, as a user runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"],
        cwd=root,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _changed_sources(status: dict) -> dict[str, dict[str, str]]:
    """Per stage, its dependencies in the source folders that `dvc status` reports changed."""
    found: dict[str, dict[str, str]] = {}
    for stage, entries in status.items():
        for entry in entries:
            changed = entry.get("changed deps", {}) if isinstance(entry, dict) else {}
            for path, state in changed.items():
                if path.split("/")[0] in SOURCE_FOLDERS:
                    found.setdefault(stage, {})[path] = state
    return found


def _write_bytecode(root: Path) -> None:
    """Bytecode as an import writes it (__pycache__/), then for every module: __pycache__/ and legacy *.pyc."""
    environment = _environment()
    imported = subprocess.run(
        [sys.executable, "-c", "import src.infra.files as m; print(m.__file__)"],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert Path(imported.stdout.strip()).is_relative_to(root), imported.stdout  # the copy's, not the checkout's
    assert list((root / "src" / "infra" / "__pycache__").glob("files.*.pyc"))
    for legacy in ([], ["-b"]):
        command = [sys.executable, "-m", "compileall", "-q", *legacy, *SOURCE_FOLDERS]
        subprocess.run(command, cwd=root, env=environment, check=True, timeout=120)


@pytest.mark.slow  # runs dvc and python processes
def test_bytecode_changes_no_dvc_status_and_a_source_edit_does(tmp_path: Path) -> None:
    root = tmp_path / "checkout"
    _copy_checkout(root, tmp_path / "dvc-site-cache")
    assert not list(root.rglob("*.pyc")), "the copy starts without bytecode"
    dependencies = _refresh_locks(root)
    before = _dvc_status(root)
    assert _changed_sources(before) == {}, "every lock entry was just written from these sources"

    _write_bytecode(root)
    source_folders = {path.parent for folder in SOURCE_FOLDERS for path in (root / folder).rglob("*.py")}
    for folder in source_folders:
        assert list(folder.glob("__pycache__/*.pyc")) and list(folder.glob("*.pyc")), f"no bytecode in {folder}"
    after = _dvc_status(root)
    assert not _changed_sources(after), (
        f"bytecode reported as a source change (see .dvcignore): {_changed_sources(after)}"
    )
    assert after == before

    with (root / EDITED).open("a") as source:
        source.write("# an edit\n")
    reported = set(_changed_sources(_dvc_status(root)))
    expected = {
        stage
        for stage, deps in dependencies.items()
        if any(dep == EDITED or EDITED.startswith(f"{dep}/") for dep in deps)
    }
    assert PROBE in expected and any(":" not in stage for stage in expected), expected  # root pipeline, probe
    assert any(stage.startswith("fair/dvc.yaml:") for stage in expected), expected
    assert reported == expected
