"""The package's import graph, read from the source with ``ast``: the product never imports the test helpers
(``step1x_edit.testing``) or the demo model's factory (``step1x_edit.demo``), not even inside a function, and the
imports of a module never come back to it, those inside functions included (no import loop)."""

import ast
import subprocess
import sys
from pathlib import Path

import step1x_edit

PACKAGE = Path(step1x_edit.__file__).parent
OUTSIDE_THE_PRODUCT = ("step1x_edit.testing", "step1x_edit.demo")


def _module_name(path: Path) -> str:
    parts = ["step1x_edit", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``step1x_edit`` module ``path`` imports, anywhere in it (functions included), resolved to its full
    name: ``from .. import x`` names the package and, when ``x`` is a module, the module."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module == "step1x_edit" or module.startswith("step1x_edit.")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {module for module in _imports(path) if module in modules}
            for name, path in modules.items()}


def _in_product(module: str) -> bool:
    return not any(module == outside or module.startswith(outside + ".") for outside in OUTSIDE_THE_PRODUCT)


def test_no_product_module_imports_the_testing_helpers_or_the_demo_factory():
    graph = _graph()
    assert "step1x_edit.demo.build" in graph and "step1x_edit.testing.tiny" in graph  # the walk sees both
    offending = {module: sorted(target for target in targets if not _in_product(target))
                 for module, targets in graph.items() if _in_product(module)}
    assert {module: targets for module, targets in offending.items() if targets} == {}


def test_the_import_graph_has_no_loop_not_even_through_imports_inside_functions():
    graph = _graph()
    assert graph["step1x_edit.train.trainer"] >= {"step1x_edit.train.checkpoint", "step1x_edit.train.config"}
    # importing a module imports its package first: an import of the package from inside it is not a loop
    edges = {module: {target for target in targets if not module.startswith(target + ".")}
             for module, targets in graph.items()}
    visiting, done, cycles = set(), set(), []

    def visit(module: str, path: list[str]) -> None:
        if module in done:
            return
        if module in visiting:
            cycles.append(path[path.index(module):])
            return
        visiting.add(module)
        for target in sorted(edges[module]):
            visit(target, [*path, target])
        visiting.discard(module)
        done.add(module)

    for module in sorted(edges):
        visit(module, [module])
    assert cycles == []


def test_building_the_command_line_loads_neither_torch_nor_the_pipeline():
    code = ("import sys, step1x_edit.cli as cli; cli.build_parser(); "
            "print(sorted(name for name in ('torch', 'diffusers', 'step1x_edit.pipeline') if name in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"  # so --help and --version answer at once
