"""The floors of DecodingMethodsModels (its README, "Architecture"), read from the code: every
import of a package module, at module level or inside a function, goes to its own floor or one
below, and the modules import each other in no circle; nor do the modules of any subpackage of
DecodingMethodsModels or evals among themselves."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "DecodingMethodsModels"
FLOORS = {  # bottom to top
    "errors": 0,
    "rules": 1, "models": 1, "prompts": 1,
    "engines": 2, "backends": 2,  # backends/: a second decoding backend, beside the engines
    "pipeline": 3,
    "library": 4, "__init__": 4,  # the package's lazy public names point into library/
    "config": 5, "main": 5,  # the CLI, at the top level of the repository
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(module: str) -> tuple[str, int]:
    """The floor name and number of a module: its subpackage, or its own name at the root."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        name = parts[0]
    else:
        name = parts[1] if len(parts) > 1 else "__init__"
    if name not in FLOORS:
        raise AssertionError(f"{module} is on no floor: add {name!r} to FLOORS and to "
                             "the Architecture table of DecodingMethodsModels/README.md")
    return name, FLOORS[name]


def sources() -> dict[str, Path]:
    files = [ROOT / "config.py", ROOT / "main.py", *sorted((ROOT / PACKAGE).rglob("*.py"))]
    return {module_name(path): path for path in files}


def imported_modules(module: str, path: Path, known: set[str], root_package: str = PACKAGE):
    """(line, imported module) of every import of a `root_package` module in `path`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target == root_package or target.startswith(root_package + "."):
                while target not in known and "." in target:
                    target = target.rpartition(".")[0]
                yield node.lineno, target


def import_graph() -> tuple[dict[str, list[tuple[int, str]]], dict[str, Path]]:
    found = sources()
    known = set(found)
    graph = {module: sorted(set(imported_modules(module, path, known)))
             for module, path in found.items()}
    return graph, found


def upward_imports(graph, paths) -> list[str]:
    wrong = []
    for module, imports in graph.items():
        name, floor = floor_of(module)
        for line, target in imports:
            target_name, target_floor = floor_of(target)
            if target_floor > floor:
                wrong.append(f"{paths[module].relative_to(ROOT)}:{line} imports {target} "
                             f"(floor {target_floor}, {target_name}) from floor {floor} ({name})")
    return wrong


def find_circle(graph) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for _, target in graph.get(module, []):
            if target == module:
                continue
            if state.get(target) == "open":  # back on the path: a circle
                stack = path + [module]
                return stack[stack.index(target):] + [target]
            if target not in state:
                circle = visit(target, path + [module])
                if circle:
                    return circle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            circle = visit(module, [])
            if circle:
                return circle
    return None


def package_graph(package: str) -> dict[str, list[tuple[int, str]]]:
    """The import graph of one top-level package's modules (imports inside functions too)."""
    found = {module_name(path): path for path in sorted((ROOT / package).rglob("*.py"))}
    return {module: sorted(set(imported_modules(module, path, set(found), package)))
            for module, path in found.items()}


def subpackage_circles(graph) -> list[list[str]]:
    """One import circle per subpackage (`pkg.sub`) whose modules import each other in a
    circle, the graph restricted to that subpackage's modules."""
    groups = sorted({".".join(m.split(".")[:2]) for m in graph if m.count(".") >= 2})
    circles = []
    for group in groups:
        inside = {m: [(line, t) for line, t in imports if t.startswith(group + ".")]
                  for m, imports in graph.items() if m.startswith(group + ".")}
        circle = find_circle(inside)
        if circle:
            circles.append(circle)
    return circles


@pytest.mark.parametrize("package", [PACKAGE, "evals"])
def test_no_subpackage_imports_itself_in_a_circle(package):
    circles = subpackage_circles(package_graph(package))
    assert not circles, "import circles inside subpackages:\n" + "\n".join(
        " -> ".join(circle) for circle in circles)


def test_the_checker_finds_a_circle_inside_a_subpackage(tmp_path):
    graph = {"evals.bench.a": [(1, "evals.bench.b")], "evals.bench.b": [(4, "evals.bench.a")],
             "evals.scoring.c": [(2, "evals.bench.a")], "evals.judge.d": []}
    assert subpackage_circles(graph) == [["evals.bench.a", "evals.bench.b", "evals.bench.a"]]
    fake = tmp_path / "x.py"
    fake.write_text("def f():\n    from evals.bench import efficiency_report\n")
    known = {"evals.bench.efficiency_report"}
    assert list(imported_modules("evals.bench.x", fake, known, "evals")) == [
        (2, "evals.bench.efficiency_report")]


def test_every_module_sits_on_a_floor():
    for module in sources():
        floor_of(module)


def test_no_import_goes_upwards():
    graph, paths = import_graph()
    wrong = upward_imports(graph, paths)
    assert not wrong, "imports going upwards:\n" + "\n".join(wrong)


def test_the_modules_import_each_other_in_no_circle():
    graph, _ = import_graph()
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


@pytest.mark.parametrize("source, expected", [
    ("from DecodingMethodsModels.pipeline.plan import Work\n", "upwards"),
    ("def f():\n    from DecodingMethodsModels.library import api\n", "upwards"),
    ("from DecodingMethodsModels.rules.combine import la_rule\n", None),
])
def test_the_checker_sees_an_upward_import_even_inside_a_function(tmp_path, source, expected):
    fake = tmp_path / "fake.py"
    fake.write_text(source)
    module = f"{PACKAGE}.engines.fake"
    graph = {module: list(imported_modules(module, fake, set(sources())))}
    wrong = upward_imports(graph, {module: ROOT / PACKAGE / "engines" / "fake.py"})
    assert bool(wrong) == (expected == "upwards"), wrong


def test_the_checker_names_a_circle():
    graph = {"a": [(1, "b")], "b": [(1, "c")], "c": [(3, "a")]}
    assert find_circle(graph) == ["a", "b", "c", "a"]
    assert find_circle({"a": [(1, "b")], "b": []}) is None


def test_the_readme_floor_table_is_the_floors_the_code_keeps():
    """The Architecture table of DecodingMethodsModels/README.md names each folder (or root
    module) on the floor FLOORS gives it: the note a newcomer reads is the rule this file
    checks."""
    text = (ROOT / PACKAGE / "README.md").read_text(encoding="utf-8")
    section = text.split("## Architecture", 1)[1]
    documented = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            for name in re.findall(r"`([a-z_]+)(?:/|\.py)`", cells[1]):
                documented[name] = int(cells[0])
    expected = {name: floor for name, floor in FLOORS.items() if name != "__init__"}
    assert documented == expected
