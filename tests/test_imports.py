"""The package's modules import each other without a cycle (module-level imports; imports inside
functions are deliberate late imports, and `if TYPE_CHECKING:` ones never run)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_imports() -> dict[str, set[str]]:
    files = {}
    for path in [*ROOT.glob("hwnas/**/*.py"), *ROOT.glob("profilers/*.py")]:
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.parse(path.read_text()).body:
            statements = [node]
            if isinstance(node, ast.If):
                statements = [] if "TYPE_CHECKING" in ast.unparse(node.test) else node.body
            for statement in statements:
                if isinstance(statement, ast.Import):
                    graph[name] |= {alias.name for alias in statement.names if alias.name in files}
                elif isinstance(statement, ast.ImportFrom):
                    base = statement.module or ""
                    if statement.level:
                        up = package.split(".")[:len(package.split(".")) - statement.level + 1]
                        base = ".".join([*up, *([base] if base else [])])
                    for alias in statement.names:
                        target = f"{base}.{alias.name}"
                        if target in files or base in files:
                            graph[name].add(target if target in files else base)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_package_has_no_import_cycle():
    graph = module_imports()
    assert len(graph) > 60 and "hwnas.methods" in graph["hwnas.search"]  # the graph is read
    assert cycles(graph) == []
