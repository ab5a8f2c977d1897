"""Position bias, order consistency and judge agreement: pure functions of verdict records.

With both orders (``--both_orders``) every pair is judged with each method shown first once.
Its two method-level outcomes combine by :func:`combine_orders`: the same both ways is that
outcome; an order-dependent pair is a tie; an invalid answer either way is invalid.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from evals.judge.judge import INVALID, TEXT_1, TEXT_2, TIE


def combine_orders(outcomes: Sequence[str]) -> str:
    """One outcome from a pair's judgments in each order (a single one is returned as is).

    >>> combine_orders(["la", "la"]), combine_orders(["la", "amulet"]), combine_orders(["tie"])
    ('la', 'tie', 'tie')
    >>> combine_orders(["la", "invalid"])
    'invalid'
    """
    if INVALID in outcomes:
        return INVALID
    return outcomes[0] if len(set(outcomes)) == 1 else TIE


def first_position_rate(verdicts: Iterable[str]) -> float:
    """Share of decisive verdicts (``text_1`` or ``text_2``) that chose the text shown first;
    0.5 is no position bias, NaN without a decisive verdict.

    >>> first_position_rate(["text_1", "text_1", "text_2", "tie", "invalid"])
    0.6666666666666666
    """
    verdicts = list(verdicts)
    first, second = verdicts.count(TEXT_1), verdicts.count(TEXT_2)
    return first / (first + second) if first + second else math.nan


def consistency_rate(outcome_pairs: Iterable[tuple[str, str]]) -> float:
    """Share of pairs judged validly in both orders whose two outcomes agree (NaN if none).

    >>> consistency_rate([("la", "la"), ("la", "amulet"), ("tie", "tie"), ("la", "invalid")])
    0.6666666666666666
    """
    valid = [(a, b) for a, b in outcome_pairs if INVALID not in (a, b)]
    return sum(a == b for a, b in valid) / len(valid) if valid else math.nan


def agreement(labels_a: Sequence[str], labels_b: Sequence[str]) -> dict:
    """Raw agreement and Cohen's kappa (scikit-learn) of two judges' labels of the same items.

    ``kappa = (p_o - p_e) / (1 - p_e)``, ``p_o`` the raw agreement and ``p_e`` the agreement
    expected from each judge's label shares; NaN when ``p_e = 1`` (both always say the same
    one label) or there is no item.

    >>> r = agreement(["a", "a", "b", "tie"], ["a", "b", "b", "tie"])
    >>> r["n"], r["agreement"], round(r["kappa"], 4)
    (4, 0.75, 0.6364)
    """
    if len(labels_a) != len(labels_b):
        raise ValueError(f"{len(labels_a)} labels against {len(labels_b)}")
    n = len(labels_a)
    if n == 0:
        return {"n": 0, "agreement": math.nan, "kappa": math.nan}
    raw = sum(a == b for a, b in zip(labels_a, labels_b, strict=True)) / n
    if len(set(labels_a) | set(labels_b)) < 2:
        return {"n": n, "agreement": raw, "kappa": math.nan}
    from sklearn.metrics import cohen_kappa_score

    return {"n": n, "agreement": raw, "kappa": float(cohen_kappa_score(labels_a, labels_b))}
