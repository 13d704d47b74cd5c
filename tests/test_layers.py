"""The package layout is the design: layers import downward only, and no import circle exists.

Layers, lowest first: the shared leaves (`errors`, `atomic`, `config`, the package root) → `models` → `diffusion` →
`adapters` → `data` → `training` | `evaluation` → `cli` → `__main__`. A module may import from its own layer and from any layer
below it; `training` and `evaluation` stand side by side and import neither each other nor `cli`. Every import counts,
also one inside a function or under `TYPE_CHECKING`: a deferred import is still an arrow of the design. Read with
`ast`, so nothing here imports the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dllm_peft"
LEAVES = {"errors", "atomic", "outputs", "config", "__init__"}
LAYERS = {
    "models": 1, "diffusion": 2, "adapters": 3, "data": 4, "training": 5, "evaluation": 5, "cli": 6, "__main__": 7,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The `dllm_peft` modules `path` imports, as absolute names (a `from X import name` counts X.name if a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("dllm_peft")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("dllm_peft"):
                continue
            for alias in node.names:  # `from . import lm` imports the module dllm_peft.x.lm
                candidate = f"{target}.{alias.name}"
                found.add(candidate if module_path(candidate) else target)
    return found


def module_path(name: str) -> Path | None:
    relative = Path(*name.split(".")[1:])
    for path in (PACKAGE / relative.with_suffix(".py"), PACKAGE / relative / "__init__.py"):
        if name != "dllm_peft" and path.is_file():
            return path
    return PACKAGE / "__init__.py" if name == "dllm_peft" else None


def layer_of(name: str) -> tuple[str, int]:
    parts = name.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top in LEAVES:
        return "leaves", 0
    return top, LAYERS[top]


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    wrong = []
    for source, targets in edges.items():
        source_layer, source_rank = layer_of(source)
        for target in targets:
            target_layer, target_rank = layer_of(target)
            if target_layer != source_layer and target_rank >= source_rank:
                wrong.append(f"{source} ({source_layer}) imports {target} ({target_layer})")
    return sorted(wrong)


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, as the path that closes it (depth-first search, each circle reported once)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if target == node:
                continue
            if state.get(target) == "open":
                found.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_every_module_belongs_to_a_layer():
    stray = [path.name for path in PACKAGE.glob("*.py") if path.stem not in LEAVES | {"__main__"}]
    assert not stray, f"modules at the package root outside the shared leaves: {stray}"
    folders = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    packages = set(LAYERS) - {"__main__"}
    assert folders == packages, f"packages without a layer (add them to LAYERS and the README): {folders ^ packages}"


def test_layers_import_downward_only():
    assert upward_imports(graph()) == []


def test_no_import_circle():
    assert circles(graph()) == []


def test_the_check_catches_a_planted_upward_import_and_circle():
    edges = graph()
    planted = {**edges, "dllm_peft.models.backbone": edges["dllm_peft.models.backbone"] | {"dllm_peft.adapters.files"}}
    assert upward_imports(planted) == [
        "dllm_peft.models.backbone (models) imports dllm_peft.adapters.files (adapters)"
    ]
    looped = {**edges, "dllm_peft.adapters.base": edges["dllm_peft.adapters.base"] | {"dllm_peft.adapters.registry"}}
    assert any("dllm_peft.adapters.registry" in circle for circle in circles(looped))


def test_the_public_names_resolve_from_the_package_root():
    import dllm_peft

    for name in dllm_peft.__all__:
        assert getattr(dllm_peft, name) is not None, name
