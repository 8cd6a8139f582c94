"""Every DVC stage depends on every project module its command runs, so an edit always reruns it.

A hand-kept `deps` list drifts (the compare stage once missed five modules, and `dvc status` called stale
reports up to date). Here each stage's modules are derived from the code: the entry module of its `cmd`
(`python -m src.x`), then every `src` module it imports, directly or not, including imports inside
functions, read with `ast` (nothing is imported). A stage whose code builds objects from the Hydra config
(`instantiate`, `@hydra.main`) also imports every `_target_: src....` named under conf/. Static, so fast.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
import yaml

from src.training.config import PROJECT_ROOT

PACKAGE = "src"
NOT_SEARCHED = {".venv", ".git", ".dvc", "node_modules"}
ENTRY = re.compile(r"\bpython[\d.]*\s+(?:-\S+\s+)*?(?:-m\s+(?P<module>[\w.]+)|(?P<script>[\w./-]+\.py))")


def dvc_files() -> list[Path]:
    return sorted(
        path for path in PROJECT_ROOT.rglob("dvc.yaml") if not NOT_SEARCHED & set(path.relative_to(PROJECT_ROOT).parts)
    )


def stages() -> Iterator[tuple[Path, str, dict]]:
    for dvc_file in dvc_files():
        for name, stage in (yaml.safe_load(dvc_file.read_text()).get("stages") or {}).items():
            yield dvc_file, name, stage


def module_file(module: str) -> Path | None:
    """The file `import module` runs (a package's __init__.py), if the module is the project's."""
    base = PROJECT_ROOT.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def with_parents(module: str) -> list[str]:
    """`src.tracking.job` runs src/__init__.py and src/tracking/__init__.py first."""
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts) + 1) if module_file(".".join(parts[:end]))]


@cache
def parsed(module: str) -> ast.Module:
    return ast.parse(module_file(module).read_text())


def direct_imports(module: str) -> set[str]:
    """The project modules `module` imports anywhere in its code (top level or inside functions)."""
    package = module if module_file(module).name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(parsed(module)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names.add(base)
            names.update(
                f"{base}.{alias.name}" for alias in node.names
            )  # `from src.training import data` imports src.training.data
    return {found for name in names if name.split(".")[0] == PACKAGE for found in with_parents(name)}


def builds_from_config(module: str) -> str | None:
    """ "app" for a `@hydra.main` app (Hydra instantiates its callbacks and launcher too: every `_target_` in
    conf/ is its import), "objects" for a caller of `instantiate` (the `_target_`s outside the `hydra` key),
    None otherwise."""
    found = None
    for node in ast.walk(parsed(module)):
        if isinstance(node, ast.Call):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            owner = getattr(getattr(function, "value", None), "id", None)
            if name == "main" and owner == "hydra":
                return "app"
            if name == "instantiate":
                found = "objects"
    return found


def config_targets(with_hydra: bool) -> set[str]:
    """The `_target_`s of conf/; those Hydra itself builds (under the `hydra` key, conf/hydra/) only `with_hydra`."""
    targets = set()

    def walk(node: object, under_hydra: bool) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                ours = key == "_target_" and isinstance(value, str) and value.startswith(PACKAGE + ".")
                if ours and (with_hydra or not under_hydra):
                    targets.update(with_parents(value))  # src.training.models.mlp -> src, src.training.models
                walk(value, under_hydra or key == "hydra")
        elif isinstance(node, list):
            for item in node:
                walk(item, under_hydra)

    for config in (PROJECT_ROOT / "conf").rglob("*.yaml"):
        in_hydra_group = "hydra" in config.relative_to(PROJECT_ROOT / "conf").parts[:-1]
        for document in yaml.safe_load_all(config.read_text()):
            walk(document, in_hydra_group)
    return targets


def modules_run_by(entry: str) -> set[str]:
    seen: set[str] = set()
    pending = with_parents(entry)
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        pending.extend(direct_imports(module))
        if kind := builds_from_config(module):
            pending.extend(config_targets(with_hydra=kind == "app"))
    return seen


def entry_modules(command: str | list[str]) -> list[str]:
    entries = []
    for line in [command] if isinstance(command, str) else command:
        for match in ENTRY.finditer(line):
            if match["module"]:
                entries.append(match["module"])
            else:
                entries.append(".".join(Path(match["script"]).with_suffix("").parts))
    return [entry for entry in entries if entry.split(".")[0] == PACKAGE and module_file(entry)]


def missing_deps(dvc_file: Path, stage: dict) -> list[str]:
    """Project files the stage's command runs that no entry of its `deps` covers (a folder covers its files)."""
    workdir = (dvc_file.parent / stage.get("wdir", ".")).resolve()
    deps = [
        (workdir / (dep if isinstance(dep, str) else next(iter(dep)))).resolve()
        for dep in stage.get("deps") or []
        if "${" not in str(dep)  # ${item.x}: a matrix value, never a module of src/
    ]
    files = {module_file(module) for entry in entry_modules(stage.get("cmd", "")) for module in modules_run_by(entry)}
    uncovered = [path for path in files if not any(path == dep or dep in path.parents for dep in deps)]
    return sorted(str(path.relative_to(PROJECT_ROOT)) for path in uncovered)


def needless_deps(dvc_file: Path, stage: dict) -> list[str]:
    """Deps under src/ that the stage's command never runs: editing them would rerun it for nothing."""
    workdir = (dvc_file.parent / stage.get("wdir", ".")).resolve()
    files = {module_file(module) for entry in entry_modules(stage.get("cmd", "")) for module in modules_run_by(entry)}
    deps = [(workdir / (dep if isinstance(dep, str) else next(iter(dep)))).resolve() for dep in stage.get("deps") or []]
    source = PROJECT_ROOT / PACKAGE
    return sorted(
        str(dep.relative_to(PROJECT_ROOT))
        for dep in deps
        if (dep == source or source in dep.parents) and (dep.is_dir() or dep not in files)
    )


STAGES = [
    pytest.param(dvc_file, name, stage, id=f"{dvc_file.relative_to(PROJECT_ROOT)}:{name}")
    for dvc_file, name, stage in stages()
]


@pytest.mark.parametrize(("dvc_file", "name", "stage"), STAGES)
def test_every_module_a_stage_runs_is_one_of_its_deps(dvc_file: Path, name: str, stage: dict) -> None:
    missing = missing_deps(dvc_file, stage)
    where = dvc_file.relative_to(PROJECT_ROOT)
    assert not missing, f"{where}: stage {name!r} runs these files but lacks them in its deps: {', '.join(missing)}"


@pytest.mark.parametrize(("dvc_file", "name", "stage"), STAGES)
def test_no_stage_depends_on_code_it_does_not_run(dvc_file: Path, name: str, stage: dict) -> None:
    """One file per module, never a folder: a folder dep reruns the stage for a sibling it never imports."""
    needless = needless_deps(dvc_file, stage)
    where = dvc_file.relative_to(PROJECT_ROOT)
    assert not needless, f"{where}: stage {name!r} depends on files or folders it never runs: {', '.join(needless)}"


def test_the_stages_are_found_and_their_imports_followed() -> None:
    """Guards the test above from passing vacuously: the root pipeline's stages and their known imports."""
    found = {name: stage for dvc_file, name, stage in stages() if dvc_file == PROJECT_ROOT / "dvc.yaml"}
    assert {"fetch", "train", "compare"} <= set(found)
    assert entry_modules(found["train"]["cmd"]) == ["src.stages.train"]
    train = modules_run_by("src.stages.train")
    assert {
        "src.train",
        "src.training.callbacks",
        "src.tracking.job",
        "src.infra.files",
    } <= train  # inside functions, too
    assert "src.training.models" in train  # only through conf/model/*.yaml's _target_
    assert "src.training.models" not in modules_run_by(
        "src.stages.fetch"
    )  # composes the config, builds nothing from it
    stale = {**found["compare"], "deps": [dep for dep in found["compare"]["deps"] if dep != "src/analysis/stats.py"]}
    assert "src/analysis/stats.py" in missing_deps(PROJECT_ROOT / "dvc.yaml", stale)
    with_folder = {**found["compare"], "deps": [*found["compare"]["deps"], "src/tracking"]}
    assert needless_deps(PROJECT_ROOT / "dvc.yaml", with_folder) == ["src/tracking"]
    # the Ray pre-flight lives with its launcher: no training stage and no part of tracking imports it
    for stage in ("src.stages.train", "src.fair.stage"):
        assert "src.infra.cluster" not in modules_run_by(stage), stage
