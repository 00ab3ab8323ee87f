"""The package's import graph, read from the source (every import, at module level or inside a function): no
module reaches itself through others, so no two modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pds_nerfstudio"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports (`from a import b` counts a.b when b is a module, else a)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) for path in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_reader_finds_imports_and_cycles() -> None:
    graph = import_graph()
    assert "pds_nerfstudio.prior.hub" in graph["pds_nerfstudio.prior.lora"]  # a module-level import
    assert "pds_nerfstudio.edit.stages" in graph["pds_nerfstudio.batch.plan"]  # one inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_itself_through_others() -> None:
    assert cycles(import_graph()) == []


def test_the_edit_core_reaches_scenes_only_through_their_port() -> None:
    graph = import_graph()
    core = {module: imported for module, imported in graph.items() if module.startswith("pds_nerfstudio.edit")}
    reached = {other for imported in core.values() for other in imported if other.startswith("pds_nerfstudio.scenes")}
    assert reached == {"pds_nerfstudio.scenes.base"}


def test_scene_adapters_sit_below_the_edit_core() -> None:
    """The adapters import the core's port, never the core: the pipeline config composes them, not they it."""
    graph = import_graph()
    scenes = {module: imported for module, imported in graph.items() if module.startswith("pds_nerfstudio.scenes")}
    assert not {other for imported in scenes.values() for other in imported if other.startswith("pds_nerfstudio.edit")}


def test_the_guidance_maths_imports_no_framework() -> None:
    """guidance/ is plain torch: nerfstudio, diffusers, transformers and peft stay in the layers above it."""
    frameworks = ("nerfstudio", "diffusers", "transformers", "peft")
    for path in sorted((PACKAGE / "guidance").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] in frameworks], f"{path.name} imports {names}"
            assert not [n for n in names if n.startswith("pds_nerfstudio.") and not n.startswith("pds_nerfstudio.guidance")], (
                f"{path.name} imports {names}"
            )
