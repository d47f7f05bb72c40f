"""The architecture, enforced: `core/`'s packages are layers and imports run one way, with no cycles; modules and
functions stay small. Run alone with `python -m pytest tests/test_layout.py` (no MLX needed: sources are parsed).

    cli ─┬─> jobs ───┬─> report ─┐
         │           └───────────┤
         ├─> bench ──────────────┴─> eval ─┐
         └─> serve ────────────────────────┴─> deploy ──> quant ──> models ──> dist ──> base

base = errors, settings, options, runtime, parallel, blas, cache, data; dist (mx.distributed groups and collectives) sits just
above base. A module may import its own package and any lower layer,
except that serve stands beside eval and report: serve never imports them, nor they serve; bench (benchmark
reports against peers) stands beside report, neither importing the other, and never imports serve (it reaches
servers over HTTP); jobs (background runs) never imports serve. views/ and app.py (the dashboard) may use any of
core; core never imports Streamlit or the dashboard."""
import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "core"
RANK = {"base": 0, "dist": 0.5, "models": 1, "quant": 2, "deploy": 3, "eval": 4, "serve": 4, "report": 5, "bench": 5,
        "jobs": 6, "cli": 7}
BASE = {"errors", "settings", "options", "runtime", "parallel", "blas", "cache", "data", "__init__"}
APART = {("serve", "eval"), ("serve", "report"), ("eval", "serve"), ("report", "serve"), ("jobs", "serve"),
         ("bench", "serve")}
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60
LONG_FUNCTIONS = {  # function -> why it stays long
}


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    """'core.quant.gptq' -> 'quant'; 'core.data' -> 'base'; 'core.__main__' -> 'cli'."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in BASE:
        return "base"
    if parts[1] == "__main__":
        return "cli"
    if parts[1] not in RANK:
        raise AssertionError(f"{module} is in no layer: add its package to RANK in tests/test_layout.py")
    return parts[1]


MODULES = {module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def imports_of(source: str, module: str) -> set[str]:
    """Every core module `source` imports, at the top or inside a function ('from core.deploy import generate'
    names the module core.deploy.generate)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "core"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "core":
                continue
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(MODULES)
            found |= subs or {node.module}
            if subs and len(subs) < len(node.names):
                found.add(node.module)
    found.discard(module)
    return found


def violations(module: str, targets: set[str]) -> list[str]:
    """The imports of `module` that cross the layering."""
    own, bad = layer(module), []
    for target in sorted(targets):
        other = layer(target)
        if other == own:
            continue
        if RANK[other] >= RANK[own] or (own, other) in APART:
            bad.append(f"{module} ({own}) imports {target} ({other})")
    return bad


def import_graph() -> dict[str, set[str]]:
    return {m: imports_of(p.read_text(), m) & set(MODULES) for m, p in MODULES.items()}


def test_every_import_runs_down_the_layers():
    bad = [v for m, targets in import_graph().items() for v in violations(m, targets)]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_check_catches_an_upward_and_a_sideways_import():
    assert violations("core.quant.recipe", imports_of("from core.report import charts", "core.quant.recipe"))
    assert violations("core.serve.routes", imports_of("from core.eval.pipeline import run_eval", "core.serve.routes"))
    assert violations("core.models.registry", imports_of("def f():\n    import core.quant.layers\n", "core.models.x"))
    assert violations("core.report.status", imports_of("from core.serve import metrics", "core.report.status"))
    assert violations("core.bench.serving", imports_of("from core.serve import engine", "core.bench.serving"))
    assert violations("core.report.ecosystem", imports_of("from core.bench.rows import BenchRow", "core.report.x"))
    assert violations("core.eval.quality", imports_of("from core.bench import run", "core.eval.quality"))
    assert not violations("core.bench.run", imports_of("from core.eval import quality", "core.bench.run"))
    assert not violations("core.bench.decode", imports_of("from core.deploy import generate", "core.bench.decode"))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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


def test_no_import_cycle():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]  # the check itself finds one
    graph = import_graph()
    # A package's __init__ importing its own modules is no cycle: a module importing a sibling runs the
    # package's __init__ first, which Python handles; only cycles between modules count.
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    assert cycles(graph) == []


def test_core_never_imports_the_dashboard():
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {n for n in names if n.split(".")[0] in ("streamlit", "views", "app")}, module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_stay_small(module):
    source = MODULES[module].read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{module} has more than {MAX_MODULE_LINES} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{module}.{node.name}"
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES or name in LONG_FUNCTIONS, f"{name} has {length} lines"
