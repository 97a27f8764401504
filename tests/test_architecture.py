"""The layers hold (docs/architecture.md): nothing below the command line imports it, the trainer does not
either, rfprobe/geometry's modules import each other without a cycle, and importing the figures picks no
matplotlib backend. Imports are read from the source (every `import`, also inside functions)."""

import ast
import subprocess
import sys

from conftest import REPO


def imports_of(path) -> set[str]:
    """The modules a source file imports (absolute names; relative imports resolved against its package)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_nothing_below_the_command_line_imports_it():
    offenders = [module_name(p) for folder in ("rfprobe", "train") for p in sorted((REPO / folder).rglob("*.py"))
                 if module_name(p) != "rfprobe.cli" and "rfprobe.cli" in imports_of(p)]
    assert offenders == []


def test_geometry_modules_import_each_other_without_a_cycle():
    files = {module_name(p): p for p in (REPO / "rfprobe" / "geometry").glob("*.py")}
    graph = {name: {m for m in imports_of(path) if m in files and m != name and m != "rfprobe.geometry"}
             for name, path in files.items() if name != "rfprobe.geometry"}
    order, state = [], {}

    def visit(node, trail):
        assert state.get(node) != "open", f"import cycle: {' -> '.join(trail + [node])}"
        if state.get(node) == "done":
            return
        state[node] = "open"
        for other in graph[node]:
            visit(other, trail + [node])
        state[node] = "done"
        order.append(node)

    for name in graph:
        visit(name, [])
    assert len(order) == len(graph) >= 6


def test_importing_the_figures_keeps_the_callers_backend():
    code = ("import matplotlib; matplotlib.use('svg'); import rfprobe.plots, rfprobe.plots.dead; "
            "print(matplotlib.get_backend())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "svg"


def test_the_lower_layers_do_not_import_the_upper_ones():
    upper = ("rfprobe.passes", "rfprobe.study", "rfprobe.studyconfig", "rfprobe.report", "rfprobe.report_tables",
             "rfprobe.cli", "rfprobe.plots", "train")
    lower = [p for folder in ("graph", "geometry") for p in (REPO / "rfprobe" / folder).glob("*.py")]
    lower += [REPO / "rfprobe" / f"{name}.py" for name in ("checkpoint", "data", "normalization", "results", "atomic",
                                                            "storecheck", "options", "errors")]
    offenders = {module_name(p): sorted(m for m in imports_of(p) if m.startswith(upper)) for p in lower}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_command_line_lists_every_pass_without_loading_torch():
    code = ("import sys, rfprobe.cli; from rfprobe.passes import REGISTRY; "
            "print(len(REGISTRY), 'torch' in sys.modules, 'xarray' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["6", "False", "False"]
