"""The repository's shape: the library imports without circles, and research code stays out of it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def vary_imports() -> dict[str, set[str]]:
    """Module -> the vary modules it imports (at module level or inside functions)."""
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_the_package_has_no_import_circle():
    graph = vary_imports()
    assert "vary.eval.runner" in graph and "vary.train.trainer" in graph  # the walk found the package
    assert cycles(graph) == []


def test_research_code_stays_out_of_the_library_and_reports():
    assert not list((REPO / "reports").rglob("*.py")), "experiment code belongs in research/"
    for folder in ("src", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert "research" not in {m.split(".")[0] for m in _imported(text)}, path
            assert "sys.path.insert" not in text or path.name == "test_layout.py", f"{path} edits sys.path"


WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf"}


def test_reports_and_research_hold_no_model_weights():
    """Training checkpoints are not committed (each version stays in .git forever); runs write them under runs/."""
    for folder in ("reports", "research"):
        weights = [p for p in (REPO / folder).rglob("*") if p.suffix in WEIGHT_SUFFIXES]
        assert weights == [], f"model weights under {folder}/: {weights}"


def _imported(text: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_library_does_not_import_its_command_line():
    """CLIs are thin layers over the library: the server, pipeline and batch runner never import a `cli` module."""
    graph = vary_imports()
    library = [m for m in graph if not m.endswith(".cli") and m not in ("vary.cli", "vary.__main__")]
    assert "vary.serve.app" in library and "vary.infer.batch" in library
    offenders = {m: sorted(d for d in graph[m] if d.endswith(".cli")) for m in library}
    assert {m: d for m, d in offenders.items() if d} == {}
