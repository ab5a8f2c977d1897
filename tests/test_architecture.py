"""The floors of DecodingMethodsModels (its README, "Architecture"), read from the code: every
import of a package module, at module level or inside a function, goes to its own floor or one
below, and the modules import each other in no circle."""

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


def imported_modules(module: str, path: Path, known: set[str]):
    """(line, imported module) of every import of a package module in `path`."""
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
            if target == PACKAGE or target.startswith(PACKAGE + "."):
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
