"""The paper's Table 1 layout and win-tie-lose figure from the evaluation scripts' outputs.

Reads what ``evals/rm_evals.py`` writes, ``{results_dir}/rm_score/{pref}/{model}/{dataset}/
{rm}_{label}_avg.csv`` (columns method, mean, std, n), and what ``evals/gpt_evals.py`` writes,
``{results_dir}/gpt_win_rate/{pref}/{model}/{dataset}/gpt_win_rate_mtx.csv`` (target,
baseline, win, tie, lose, ...). The paper's own numbers (``evals/study/paper_results.py``) stand
beside ours where they exist.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from evals.errors import EvalError
from evals.scoring.rm_run import rm_slug
from evals.study.paper_results import (
    PAPER_METHOD_LABELS,
    PAPER_METHODS,
    PAPER_PERSONAL_WIN_RATE,
    PERSONAL_DATASET,
    paper_table1_average,
)


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EvalError(f"cannot read {path}: {exc}") from None


def _number(row: dict, name: str, path: Path) -> float:
    try:
        return float(row[name])
    except (KeyError, TypeError, ValueError):
        raise EvalError(f"{path}: column {name!r} missing or not a number in {row}") from None


def read_rm_scores(results_dir: Path, rm_name: str, label: str) -> list[dict]:
    """One row per (model, dataset, preference, method) with its mean score and n."""
    pattern = f"{rm_slug(rm_name)}_{label}_avg.csv"
    rows = []
    root = Path(results_dir) / "rm_score"
    for path in sorted(root.glob(f"*/*/*/{pattern}")):
        pref, model, dataset = path.parent.relative_to(root).parts
        for record in _read_csv(path):
            rows.append({"model": model, "dataset": dataset, "preference": pref,
                         "method": record.get("method", ""),
                         "mean": _number(record, "mean", path),
                         "n": int(_number(record, "n", path))})
    return rows


def check_table1_inputs(results_dir: Path, rm_name: str, label: str) -> None:
    """An EvalError unless ``results_dir`` holds reward-model averages of ``rm_name`` and
    ``label`` or GPT-judge win rates: what is missing, and what is there instead."""
    if not Path(results_dir).is_dir():
        raise EvalError(f"--results_dir {results_dir}: no such folder (run evals/rm_evals.py "
                        "or evals/gpt_evals.py first, or point --results_dir at their "
                        "--results_dir)")
    root = Path(results_dir) / "rm_score"
    wanted = f"{rm_slug(rm_name)}_{label}_avg.csv"
    if any(root.glob(f"*/*/*/{wanted}")) or any(
            (Path(results_dir) / "gpt_win_rate").glob("*/*/*/gpt_win_rate_mtx.csv")):
        return
    found = sorted({p.name.removesuffix("_avg.csv") for p in root.glob("*/*/*/*_avg.csv")})
    hint = (f"; reward-model averages found: {', '.join(found)} (pass --rm_name and "
            "--rm_label, e.g. --rm_name loglik --rm_label mean_logprob)" if found
            else ": run evals/rm_evals.py or evals/gpt_evals.py first")
    raise EvalError(f"no {wanted} (--rm_name {rm_name} --rm_label {label}) and no GPT-judge "
                    f"win rates under {results_dir}{hint}")


def table1_rows(scores: list[dict]) -> list[dict]:
    """The paper's layout: a row per (model, dataset) plus a per-model ``average`` row over
    datasets, a column per ``preference:method``. The average is the plain mean of the
    datasets' means, as the paper averages its four datasets."""
    prefs = list(dict.fromkeys(r["preference"] for r in scores))
    methods = _method_order(scores)
    rows = []
    for model in dict.fromkeys(r["model"] for r in scores):
        mine = [r for r in scores if r["model"] == model]
        for dataset in dict.fromkeys(r["dataset"] for r in mine):
            row = {"model": model, "dataset": dataset}
            for r in mine:
                if r["dataset"] == dataset:
                    row[f"{r['preference']}:{r['method']}"] = r["mean"]
            rows.append(row)
        average = {"model": model, "dataset": "average"}
        for pref in prefs:
            for method in methods:
                values = [r["mean"] for r in mine
                          if r["preference"] == pref and r["method"] == method]
                if values:
                    average[f"{pref}:{method}"] = sum(values) / len(values)
        rows.append(average)
    return rows


def comparison_rows(scores: list[dict]) -> list[dict]:
    """Per (model, preference, method): our average over the datasets found, how many, and the
    paper's average over its four datasets (None where the paper has no number)."""
    rows = []
    keys = dict.fromkeys((r["model"], r["preference"], r["method"]) for r in scores)
    for model, pref, method in keys:
        values = [r["mean"] for r in scores
                  if (r["model"], r["preference"], r["method"]) == (model, pref, method)]
        rows.append({"model": model, "preference": pref, "method": method,
                     "ours": sum(values) / len(values), "datasets": len(values),
                     "paper": paper_table1_average(model, pref, method)})
    return rows


def _method_order(scores: list[dict]) -> list[str]:
    found = list(dict.fromkeys(r["method"] for r in scores))
    return [m for m in PAPER_METHODS if m in found] + [m for m in found if m not in PAPER_METHODS]


def table1_columns(scores: list[dict]) -> list[str]:
    prefs = list(dict.fromkeys(r["preference"] for r in scores))
    return ["model", "dataset", *(f"{p}:{m}" for p in prefs for m in _method_order(scores))]


def read_win_rates(results_dir: Path) -> list[dict]:
    """Every target-vs-baseline row of every ``gpt_win_rate_mtx.csv``, with its setting."""
    root = Path(results_dir) / "gpt_win_rate"
    rows = []
    for path in sorted(root.glob("*/*/*/gpt_win_rate_mtx.csv")):
        pref, model, dataset = path.parent.relative_to(root).parts
        for record in _read_csv(path):
            counts = {k: int(_number(record, k, path)) for k in ("win", "tie", "lose")}
            rows.append({"preference": pref, "model": model, "dataset": dataset,
                         "target": record.get("target", ""), "baseline": record.get("baseline",
                                                                                    ""),
                         **counts})
    return rows


def pooled_win_tie_lose(win_rows: list[dict], dataset: str | None = None) -> list[dict]:
    """Per (target, baseline): counts summed over settings (of ``dataset`` if given), rates
    over valid judgments (``win / (win + tie + lose)``), the mean of the settings' own win
    rates (how the paper averages), and the paper's number for Amulet on Personal."""
    pooled = []
    chosen = [r for r in win_rows if dataset is None or r["dataset"] == dataset]
    for target, baseline in dict.fromkeys((r["target"], r["baseline"]) for r in chosen):
        mine = [r for r in chosen if (r["target"], r["baseline"]) == (target, baseline)]
        win, tie, lose = (sum(r[k] for r in mine) for k in ("win", "tie", "lose"))
        valid = win + tie + lose
        per_setting = [r["win"] / v for r in mine if (v := r["win"] + r["tie"] + r["lose"])]
        paper = (PAPER_PERSONAL_WIN_RATE.get(baseline)
                 if target == "amulet" and dataset == PERSONAL_DATASET else None)
        pooled.append({
            "target": target, "baseline": baseline, "settings": len(mine),
            "win": win, "tie": tie, "lose": lose,
            "win_rate": win / valid if valid else math.nan,
            "tie_rate": tie / valid if valid else math.nan,
            "lose_rate": lose / valid if valid else math.nan,
            "mean_setting_win_rate": (sum(per_setting) / len(per_setting)
                                      if per_setting else math.nan),
            "paper_win_rate": paper,
            "label": f"{target} vs {PAPER_METHOD_LABELS.get(baseline, baseline)}",
        })
    return pooled
