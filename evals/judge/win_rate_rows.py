"""The rows of the win-rate tables, computed from judgments (pure; no I/O).

Target-vs-baseline rows carry the raw counts and rates, the length-controlled win rate
(:mod:`evals.judge.length_control`) beside the raw one with ties as half (the scale it is on), each
method's mean length in characters, and the judge's position bias and order consistency
(:mod:`evals.judge.judge_bias`).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from evals.judge import metrics
from evals.judge.judge import winner
from evals.judge.judge_bias import consistency_rate, first_position_rate
from evals.judge.length_control import length_controlled, question_difficulty

TARGET_COLUMNS = [
    "target", "baseline", "win", "tie", "lose", "invalid", "n",
    "win_rate", "tie_rate", "lose_rate", "win_rate_ci_low", "win_rate_ci_high",
    "win_rate_ties_half", "lc_win_rate", "length_coef", "target_mean_chars",
    "baseline_mean_chars", "first_position_rate", "order_consistency", "judge",
]
PAIR_COLUMNS = ["method_a", "method_b", "a_wins", "ties", "b_wins", "invalid", "a_score",
                "judge"]
BT_COLUMNS = ["rank", "method", "bt_theta", "ci_low", "ci_high", "p_top", "judge"]
JUDGMENT_COLUMNS = ["index", "method_a", "method_b", "text_1", "text_2", "raw_answer", "outcome",
                    "judge"]


def pair_scores(tensor: np.ndarray, a: int, b: int) -> np.ndarray:
    """Per question: 1 if method a beat b, 0.5 a tie, 0 a loss, NaN if not validly judged."""
    won, lost = tensor[:, a, b], tensor[:, b, a]
    return np.where(won + lost > 0, won, np.nan)


def length_columns(tensor: np.ndarray, methods: list[str], target: str, baseline: str,
                   lengths: dict[str, np.ndarray]) -> dict:
    """Raw win rate with ties as half, the length-controlled one and its length coefficient,
    and both methods' mean lengths (characters, over the questions judged)."""
    t = methods.index(target)
    scores = {m: pair_scores(tensor, t, k) for k, m in enumerate(methods) if m != target}
    y = scores[baseline]
    valid = ~np.isnan(y)
    difficulty = question_difficulty(scores, baseline)
    fit = length_controlled(y[valid], lengths[target][valid], lengths[baseline][valid],
                            None if difficulty is None else difficulty[valid])
    return {
        "win_rate_ties_half": float(y[valid].mean()) if valid.any() else math.nan,
        "lc_win_rate": fit.lc_win_rate, "length_coef": fit.length_coef,
        "target_mean_chars": float(lengths[target].mean()),
        "baseline_mean_chars": float(lengths[baseline].mean()),
    }


def position_columns(comparisons: list, verdicts: dict[str, str], target: str,
                     baseline: str) -> dict:
    """The judge's share of first-position wins and, with both orders, its consistency."""
    mine = [c for c in comparisons if {c.method_a, c.method_b} == {target, baseline}]
    by_question: dict[int, list[str]] = defaultdict(list)
    for c in mine:
        by_question[c.index].append(winner(verdicts[c.key], c.first, c.second))
    both = [tuple(v) for v in by_question.values() if len(v) == 2]
    return {
        "first_position_rate": first_position_rate(verdicts[c.key] for c in mine),
        "order_consistency": consistency_rate(both) if both else math.nan,
    }


def target_rows(
    judgments: list[metrics.Judgment],
    methods: list[str],
    target: str,
    tensor: np.ndarray,
    weights: np.ndarray | None,
    lengths: dict[str, np.ndarray],
    comparisons: list,
    verdicts: dict[str, str],
) -> list[dict]:
    """Rows of the target-vs-baseline table (CI columns NaN without bootstrap)."""
    rows = []
    t = methods.index(target)
    for baseline in methods:
        if baseline == target:
            continue
        counts = metrics.win_tie_lose(judgments, target, baseline)
        low = high = float("nan")
        if weights is not None and counts.valid:
            samples = metrics.bootstrap_win_rate(tensor, t, methods.index(baseline), weights)
            low, high = (float(x) for x in metrics.percentile_interval(samples))
        rows.append({
            "target": target, "baseline": baseline, "win": counts.win, "tie": counts.tie,
            "lose": counts.lose, "invalid": counts.invalid, "n": counts.valid + counts.invalid,
            "win_rate": counts.rate(counts.win), "tie_rate": counts.rate(counts.tie),
            "lose_rate": counts.rate(counts.lose), "win_rate_ci_low": low, "win_rate_ci_high": high,
            **length_columns(tensor, methods, target, baseline, lengths),
            **position_columns(comparisons, verdicts, target, baseline),
        })
    return rows


def pair_rows(judgments: list[metrics.Judgment], pairs: list[tuple[str, str]]) -> list[dict]:
    """Counts for every judged pair; ``a_score = (a_wins + ties / 2) / valid``."""
    rows = []
    for a, b in pairs:
        c = metrics.win_tie_lose(judgments, a, b)
        rows.append({
            "method_a": a, "method_b": b, "a_wins": c.win, "ties": c.tie, "b_wins": c.lose,
            "invalid": c.invalid, "a_score": c.rate(c.win + 0.5 * c.tie),
        })
    return rows


def ranking_rows(
    tensor: np.ndarray, methods: list[str], weights: np.ndarray | None, alpha: float
) -> tuple[list[dict], int]:
    """Bradley-Terry ranking (ties = half a win each way) with bootstrap CIs and P(top).

    Returns ``(rows, failed)``: intervals and P(top) are over the bootstrap replicates whose
    fit converged, ``failed`` counts the others. Raises :class:`metrics.BradleyTerryError`
    if the fit on all questions fails.
    """
    theta = metrics.bradley_terry(tensor.sum(axis=0), alpha)
    low = high = np.full(len(methods), np.nan)
    p_top = np.full(len(methods), np.nan)
    failed = 0
    if weights is not None:
        samples = metrics.bootstrap_bradley_terry(tensor, weights, alpha)  # (B, M)
        fitted = samples[np.isfinite(samples).all(axis=1)]
        failed = len(samples) - len(fitted)
        if len(fitted):
            low, high = metrics.percentile_interval(fitted)
            p_top = np.bincount(fitted.argmax(axis=1), minlength=len(methods)) / len(fitted)
    order = np.argsort(-theta, kind="stable")
    rows = [
        {
            "rank": rank, "method": methods[k], "bt_theta": float(theta[k]),
            "ci_low": float(low[k]), "ci_high": float(high[k]), "p_top": float(p_top[k]),
        }
        for rank, k in enumerate(order, start=1)
    ]
    return rows, failed


def judgment_rows(comparisons: list, cache: dict[str, dict]) -> list[dict]:
    """One audit row per comparison (two per pair and question with both orders)."""
    return [
        {
            "index": c.index, "method_a": c.method_a, "method_b": c.method_b,
            "text_1": c.first, "text_2": c.second, "raw_answer": cache[c.key]["raw"],
            "outcome": winner(cache[c.key]["verdict"], c.first, c.second),
        }
        for c in comparisons
    ]


def labelled(rows: list[dict], judge: str) -> list[dict]:
    """``rows`` with the judge's name in a ``judge`` column."""
    return [{**row, "judge": judge} for row in rows]
