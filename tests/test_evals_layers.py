"""evals/ imports go one way: entry points -> study -> judge -> scoring -> the evals root, and
bench -> the evals root; no evals file is over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

EVALS = ROOT / "evals"
ROOT_MODULES = {"errors", "threads", "jsonl_store", "tables"}
# what each floor may import from evals, besides itself
ALLOWED = {
    "root": {"root"},
    "scoring": {"root"},
    "bench": {"root"},
    "judge": {"scoring", "root"},
    "study": {"judge", "scoring", "bench", "root"},
}


def floor_of(module: str) -> str:
    """'evals.judge.win_rate' -> 'judge'; 'evals.errors' -> 'root'; 'evals.gpt_evals' ->
    'entry' (an entry point's module, which nothing inside evals may import)."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (EVALS / parts[1]).is_dir()):
        return parts[1]
    return "root" if len(parts) < 2 or parts[1] in ROOT_MODULES else "entry"


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("evals"):
            names |= {f"{node.module}.{alias.name}" if node.module == "evals" else node.module
                      for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "evals"}
    return names


def upward_imports() -> list[str]:
    found = []
    for path in sorted(EVALS.rglob("*.py")):
        rel = path.relative_to(EVALS)
        if len(rel.parts) == 1 and rel.stem not in ROOT_MODULES | {"__init__"}:
            continue  # an entry point may import any floor
        floor = rel.parts[0] if len(rel.parts) > 1 else "root"
        for module in imported(path):
            target = floor_of(module)
            if target != floor and target not in ALLOWED[floor]:
                found.append(f"evals/{rel} ({floor}) imports {module} ({target})")
    return found


def test_evals_imports_go_one_way():
    assert not upward_imports()


def test_an_upward_import_is_caught(tmp_path, monkeypatch):
    fake = tmp_path / "evals"
    (fake / "scoring").mkdir(parents=True)
    (fake / "judge").mkdir()
    (fake / "scoring" / "x.py").write_text("from evals.judge.judge import INVALID\n")
    monkeypatch.setattr(__import__(__name__), "EVALS", fake)
    assert upward_imports() == ["evals/scoring/x.py (scoring) imports evals.judge.judge (judge)"]


def test_no_evals_file_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in EVALS.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long
