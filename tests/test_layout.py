"""The package layout is the architecture (DESIGN §2): no import cycles, and each layer imports
only the layers below it. Read from the source, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import llm2search

ROOT = Path(llm2search.__file__).parent
# Which top-level subpackages each one may import (besides errors, paths and itself).
ALLOWED = {
    "models": set(),
    "store": {"models"},
    "indexer": {"models", "store"},
    "search": {"models", "store"},
    "serve": {"models", "store", "search"},
    "eval": {"models", "store", "search"},
    "demo": {"models", "store", "indexer", "search"},
    "cluster": {"models", "store", "indexer"},
    "library": {"models", "store", "indexer", "search"},
    "cli": {"models", "store", "indexer", "search", "serve", "eval", "demo", "cluster", "library"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Modules of llm2search that `path` imports anywhere, TYPE_CHECKING blocks left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            target, names = "", [a.name for a in node.names]
        else:
            continue
        for name in [target, *names]:
            if name.startswith("llm2search"):
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    # A model directory's remote code (models/demo/, models/remote_code/) is loaded by
    # transformers from the model directory, never imported by llm2search.
    model_code = (ROOT / "models" / "demo", ROOT / "models" / "remote_code")
    files = {_module_name(p): p for p in ROOT.rglob("*.py") if not any(p.is_relative_to(d) for d in model_code)}
    graph = {}
    for module, path in files.items():
        # "from .x import y" names module x (y may be a function); keep only real modules.
        graph[module] = {m for m in _imports(path) if m in files and m != module}
    return graph


def test_no_import_cycles() -> None:
    graph = _graph()
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"


def test_layers_import_only_what_is_below_them() -> None:
    wrong = []
    for module, deps in _graph().items():
        parts = module.split(".")
        if len(parts) < 2 or parts[1] not in ALLOWED:
            continue
        for dep in deps:
            dparts = dep.split(".")
            if len(dparts) < 2 or dparts[1] in ("errors", "paths") or dparts[1] == parts[1]:
                continue
            if dparts[1] not in ALLOWED[parts[1]]:
                wrong.append(f"{module} imports {dep}")
    assert wrong == [], "\n".join(sorted(wrong))


def test_cli_and_serve_are_packages_with_one_module_per_job() -> None:
    cli = {p.stem for p in (ROOT / "cli").glob("*.py")}
    assert {"app", "common", "index", "query", "serve", "info", "eval", "demo", "dev"} <= cli
    serve = {p.stem for p in (ROOT / "serve").glob("*.py")}
    assert {"schemas", "security", "routes", "batching", "thumbnails", "service", "server"} <= serve
    assert (ROOT / "serve" / "web" / "index.html").is_file()
    assert not (ROOT / "search" / "server.py").exists()
