"""The house rules, checked on the package's source: no import circle, the model code depends only
on errors.py, config.py holds the keys only, and every library module is short and says its job."""
import ast
import os

import pytest
from conftest import REPO

PACKAGE = os.path.join(REPO, "maskrcnnpp")
# A library module longer than this is doing more than one job.
MAX_MODULE_LINES = 400


def module_files():
    """{dotted module name: path} of every module of the package."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name, path, modules):
    """The package's modules that module ``name`` imports anywhere in its file (in functions too:
    a circle through a late import is still a circle)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # "from package import submodule" depends on the submodule, not on the package
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules and target != name)
    return found


def import_graph():
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph):
    """One import circle as a list of modules (first == last), or None."""
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return trail[trail.index(target):] + [target]
            if target not in state:
                cycle = visit(target, trail + [target])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_circle_and_only_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_of_the_package_imports_itself_through_others():
    assert find_cycle(import_graph()) is None


def test_the_model_code_depends_on_nothing_of_the_package_but_errors():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("maskrcnnpp.modeling"):
            outside = {t for t in targets if not t.startswith("maskrcnnpp.modeling")}
            assert outside <= {"maskrcnnpp.errors"}, name


def test_config_py_holds_the_keys_only():
    tree = ast.parse(open(os.path.join(PACKAGE, "config.py")).read())
    definitions = [node.name for node in tree.body
                   if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    assert definitions == ["add_maskrcnnpp_config"]


@pytest.mark.parametrize("name,path", sorted(module_files().items()))
def test_each_module_is_short_and_opens_with_its_job(name, path):
    source = open(path).read()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, name
    docstring = ast.get_docstring(ast.parse(source))
    assert docstring and len(docstring.splitlines()[0].split()) >= 4, name
