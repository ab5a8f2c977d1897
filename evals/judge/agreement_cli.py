"""Agreement of two judges (or two protocols) over the pairs both judged: raw and Cohen's kappa.

Run from the repository root, on two judgments files or two result folders written by
``evals/gpt_evals.py``::

    python evals/judge_agreement.py results/gpt_win_rate results/local_judge_win_rate/MyJudge
    python evals/judge_agreement.py results/gpt_win_rate results/gpt_win_rate_args --out agree.csv

A folder's ``*judgments.csv`` files are matched by their path below it (the setting
``{pref}/{model}/{dataset}``). An item is one question and method pair of one setting; a pair
judged in both orders counts once, combined as in the evaluation (an order-dependent pair is a
tie). Each judge's label is which method of the pair won, or a tie; items either judge left
invalid, or only one judged, are counted apart. One row per method pair and one for all.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from evals.errors import EvalError, exit_code
from evals.judge.judge import INVALID

COLUMNS = ["method_a", "method_b", "n", "agreement", "kappa", "invalid", "only_in_a",
           "only_in_b", "judge_a", "judge_b"]
ALL = "(all)"


def judgment_files(path: Path) -> dict[str, Path]:
    """``{setting: judgments CSV}``: the file itself, or every one under a folder."""
    if path.is_file():
        return {"": path}
    if not path.is_dir():
        raise EvalError(f"{path} is neither a judgments CSV nor a results folder")
    found = {str(p.parent.relative_to(path)): p for p in sorted(path.rglob("*judgments.csv"))}
    if not found:
        raise EvalError(f"no *judgments.csv under {path} (run evals/gpt_evals.py first)")
    return found


def read_items(path: Path, setting: str) -> tuple[dict[tuple, str], set[str]]:
    """``({(setting, index, method_a, method_b): label}, judge names)`` of one judgments file,
    the pair sorted, the label the winning method, ``tie`` or ``invalid``; both orders of a
    pair are combined."""
    from evals.judge.judge_bias import combine_orders

    outcomes: dict[tuple, list[str]] = {}
    judges: set[str] = set()
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            try:
                a, b = sorted((row["method_a"], row["method_b"]))
                key = (setting, int(row["index"]), a, b)
                outcomes.setdefault(key, []).append(row["outcome"])
                judges.add(row.get("judge", ""))
            except (KeyError, ValueError) as exc:
                raise EvalError(f"{path}: not a judgments file ({exc})") from None
    return {key: combine_orders(found) for key, found in outcomes.items()}, judges


def read_judge(path: Path) -> tuple[dict[tuple, str], str]:
    """Every item of a judgments file or folder, and the judge's name(s)."""
    items: dict[tuple, str] = {}
    judges: set[str] = set()
    for setting, file in judgment_files(path).items():
        found, names = read_items(file, setting)
        items.update(found)
        judges |= names
    return items, ", ".join(sorted(judges))


def agreement_rows(items_a: dict[tuple, str], items_b: dict[tuple, str], judge_a: str,
                   judge_b: str) -> list[dict]:
    """One row per method pair and one for all pairs (see the module docstring)."""
    from evals.judge.judge_bias import agreement

    pairs = sorted({key[2:] for key in items_a} | {key[2:] for key in items_b})
    rows = []
    for pair in [*pairs, None]:
        keys_a = {k for k in items_a if pair is None or k[2:] == pair}
        keys_b = {k for k in items_b if pair is None or k[2:] == pair}
        shared = sorted(keys_a & keys_b)
        valid = [k for k in shared if INVALID not in (items_a[k], items_b[k])]
        result = agreement([items_a[k] for k in valid], [items_b[k] for k in valid])
        a, b = pair if pair is not None else (ALL, ALL)
        rows.append({
            "method_a": a, "method_b": b, "n": result["n"], "agreement": result["agreement"],
            "kappa": result["kappa"], "invalid": len(shared) - len(valid),
            "only_in_a": len(keys_a - keys_b), "only_in_b": len(keys_b - keys_a),
            "judge_a": judge_a, "judge_b": judge_b,
        })
    return rows


def judge_agreement(path_a: Path, path_b: Path) -> list[dict]:
    """The agreement rows of two judges' judgments files or result folders."""
    items_a, judge_a = read_judge(Path(path_a))
    items_b, judge_b = read_judge(Path(path_b))
    rows = agreement_rows(items_a, items_b, judge_a, judge_b)
    if rows[-1]["n"] == 0:
        raise EvalError(f"{path_a} and {path_b} share no validly judged pair (same settings, "
                        "questions and methods are needed)")
    return rows


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; bad input is one stderr line and exit code 2."""
    parser = argparse.ArgumentParser(
        description="Raw agreement and Cohen's kappa of two judges over the pairs both judged")
    parser.add_argument("judge_a", type=Path, help="a *judgments.csv file or a results folder")
    parser.add_argument("judge_b", type=Path, help="the other judge's file or folder")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as CSV")
    args = parser.parse_args(argv)
    try:
        rows = judge_agreement(args.judge_a, args.judge_b)
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    from evals.jsonl_store import write_text_atomic
    from evals.tables import to_csv, to_markdown

    print(to_markdown(rows, COLUMNS))
    if args.out is not None:
        write_text_atomic(args.out, to_csv(rows, COLUMNS))
        print(f"\nwritten to {args.out}")
    return 0

