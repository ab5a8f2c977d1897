"""Pure aggregation of reward-model scores: per-method means and the paper's best-method share."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence, Set


def left_out(too_long: Iterable[tuple[str, int]], methods: Sequence[str],
             per_file: bool) -> dict[str, set[int]]:
    """Per method, the question indices left out of its average, from the ``(method, index)``
    responses too long for a scorer. ``per_file`` (ARGS's and PAD's ``measure_reward.py``,
    which score one method's file at a time): a method loses its own too-long responses only.
    Otherwise a question too long for any method leaves every method's average, so that all
    methods are averaged over the same questions.

    >>> left_out([("a", 2)], ["a", "b"], per_file=True)
    {'a': {2}, 'b': set()}
    >>> left_out([("a", 2)], ["a", "b"], per_file=False)
    {'a': {2}, 'b': {2}}
    """
    too_long = list(too_long)
    if per_file:
        return {m: {i for method, i in too_long if method == m} for m in methods}
    questions = {i for _, i in too_long}
    return {m: set(questions) for m in methods}


def method_means(
    values: Mapping[str, Mapping[int, float]], excluded: Mapping[str, Set[int]] | None = None
) -> list[dict]:
    """Per method m: ``mean = sum_i v[m][i] / n`` and the sample std over the questions i not
    in ``excluded[m]`` (see :func:`left_out`; a method absent from it loses nothing).

    >>> method_means({"a": {0: 1.0, 1: 3.0, 2: 100.0}}, excluded={"a": {2}})
    [{'method': 'a', 'mean': 2.0, 'std': 1.4142135623730951, 'n': 2}]
    """
    excluded = excluded or {}
    rows = []
    for method, by_index in values.items():
        out = excluded.get(method, set())
        kept = [v for i, v in sorted(by_index.items()) if i not in out]
        n = len(kept)
        mean = sum(kept) / n if n else float("nan")
        var = sum((v - mean) ** 2 for v in kept) / (n - 1) if n > 1 else float("nan")
        rows.append({"method": method, "mean": mean, "std": math.sqrt(var), "n": n})
    return rows


def best_methods(means: Mapping[str, float], rel_tol: float = 1e-12) -> list[str]:
    """Methods whose mean equals the highest mean (NaN means never win).

    >>> best_methods({"a": 0.5, "b": 0.7, "c": 0.7})
    ['b', 'c']
    """
    finite = {m: v for m, v in means.items() if not math.isnan(v)}
    if not finite:
        return []
    top = max(finite.values())
    return [m for m, v in finite.items() if math.isclose(v, top, rel_tol=rel_tol, abs_tol=0.0)]


def best_share(settings: Sequence[Mapping[str, float]], methods: Sequence[str]) -> list[dict]:
    """Share of settings in which each method has the highest mean score.

    ``share[m] = (1 / S) * sum_s [m in best(s)] / |best(s)|``: a setting where k methods
    tie for the top gives each of them 1/k, so shares sum to 1.

    >>> best_share([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 3.0}], ["a", "b"])
    [{'method': 'a', 'best': 0.5, 'share': 0.25}, {'method': 'b', 'best': 1.5, 'share': 0.75}]
    """
    credit = dict.fromkeys(methods, 0.0)
    for means in settings:
        winners = best_methods(means)
        for m in winners:
            credit[m] += 1.0 / len(winners)
    total = len(settings)
    return [
        {"method": m, "best": credit[m], "share": credit[m] / total if total else float("nan")}
        for m in methods
    ]


# Judge-free indicator columns of the table and where each comes from in
# ``evals.scoring.indicators.text_indicators``: ("means" | "corpus", key).
INDICATOR_COLUMNS = {
    "len_tokens": ("means", "length_tokens"),
    "len_words": ("means", "length_words"),
    "hit_max_new_tokens": ("corpus", "share_hitting_cap"),
    "distinct_1": ("corpus", "distinct_1"),
    "distinct_2": ("corpus", "distinct_2"),
    "rep_2": ("means", "rep_2"),
    "rep_3": ("means", "rep_3"),
    "rep_4": ("means", "rep_4"),
    "diversity": ("means", "args_diversity"),
    "degenerate": ("means", "degenerate"),
}


def indicator_row(
    texts: Sequence[str],
    token_counts: Sequence[int] | None = None,
    max_new_tokens: int | None = None,
    cap_slack: int = 0,
) -> dict:
    """One method's indicator columns (:data:`INDICATOR_COLUMNS`) over its responses:
    mean length in tokens (``""`` without token counts) and words, the share of responses
    with ``tokens >= max_new_tokens - cap_slack`` (``""`` without both), corpus distinct-1/2,
    ARGS's mean rep-2/3/4 and diversity, the share of degenerate responses."""
    from evals.scoring.indicators import text_indicators

    found = text_indicators(list(texts), token_counts=token_counts,
                            max_new_tokens=max_new_tokens if token_counts is not None else None,
                            cap_slack=cap_slack)
    return {column: found[part].get(key, "") for column, (part, key) in INDICATOR_COLUMNS.items()}
