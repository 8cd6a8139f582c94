"""The house's layers, checked from the code (static, like tests/test_dvc_deps.py): imports point down only,
infra/ <- analysis/ <- training/ <- tracking/ <- the entry points (train.py, stages/, fair/, homework/), and no
module imports itself back through others. A back arrow makes a low layer's edit rerun every DVC stage above
it and lets a change in one place break another silently."""

from __future__ import annotations

from src.training.config import PROJECT_ROOT
from tests.test_dvc_deps import direct_imports

LAYERS = {
    "infra": 0,
    "analysis": 1,
    "training": 2,
    "tracking": 3,
    "train": 4,
    "stages": 4,
    "fair": 4,
    "callback_study": 4,
    "homework": 4,
}


def modules() -> list[str]:
    names = []
    for path in sorted((PROJECT_ROOT / "src").rglob("*.py")):
        parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else None  # `src` itself belongs to none


def imports(module: str) -> set[str]:
    """What `module` imports, less the packages Python runs on the way (src, src.tracking for its own modules)."""
    return {found for found in direct_imports(module) if found != module and not module.startswith(found + ".")}


def test_every_module_is_in_a_layer() -> None:
    unplaced = [module for module in modules() if module != "src" and module.split(".")[1] not in LAYERS]
    assert not unplaced, f"modules outside every layer of LAYERS (add their folder): {unplaced}"


def test_imports_point_down_or_sideways_only() -> None:
    back = [
        f"{module} -> {imported}"
        for module in modules()
        for imported in imports(module)
        if layer(module) is not None and layer(imported) is not None and layer(imported) > layer(module)
    ]
    assert not back, "imports that point up a layer (infra < analysis < training < tracking < entry points):\n" + (
        "\n".join(sorted(back))
    )


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each import cycle found by a depth-first walk, as `a -> b -> a`."""
    cycles: list[str] = []
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_no_import_cycles_between_modules() -> None:
    graph = {module: {m for m in imports(module) if m != "src"} for module in modules()}
    assert sum(map(len, graph.values())) > 100  # the walk sees the real imports
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]
