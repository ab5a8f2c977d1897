"""Pure metrics: win/tie/lose, Bradley-Terry (choix) and the bootstrap, each against its formula."""

from __future__ import annotations

import math
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.judge import metrics, win_rate  # noqa: E402
from evals.judge.judge import INVALID, TIE  # noqa: E402
from evals.judge.metrics import Judgment  # noqa: E402


def test_win_tie_lose_counts_either_slot_and_keeps_invalid_apart():
    judgments = [
        Judgment(0, "amulet", "base", "amulet"),
        Judgment(1, "base", "amulet", "amulet"),  # target in the second slot
        Judgment(2, "amulet", "base", TIE),
        Judgment(3, "amulet", "base", "base"),
        Judgment(4, "amulet", "base", INVALID),
        Judgment(5, "amulet", "la", "la"),  # another pair: ignored
    ]
    counts = metrics.win_tie_lose(judgments, "amulet", "base")
    assert (counts.win, counts.tie, counts.lose, counts.invalid) == (2, 1, 1, 1)
    assert counts.rate(counts.win) == pytest.approx(2 / 4)
    assert math.isnan(metrics.WinTieLose(0, 0, 0, 3).rate(0))


def test_outcome_tensor_gives_half_a_win_each_way_for_a_tie():
    judgments = [
        Judgment(10, "a", "b", "a"), Judgment(10, "a", "c", TIE),
        Judgment(11, "b", "c", "c"), Judgment(11, "a", "b", INVALID),
    ]
    tensor = metrics.outcome_tensor(judgments, ["a", "b", "c"], [10, 11])
    expected = np.zeros((2, 3, 3))
    expected[0, 0, 1] = 1.0
    expected[0, 0, 2] = expected[0, 2, 0] = 0.5
    expected[1, 2, 1] = 1.0
    np.testing.assert_array_equal(tensor, expected)


@pytest.mark.parametrize(("wins", "ties", "losses"), [(30, 0, 10), (12, 8, 20), (5, 40, 5)])
def test_two_method_bradley_terry_is_the_log_odds_with_ties_as_half_wins(wins, ties, losses):
    matrix = np.array([[0.0, wins + ties / 2], [losses + ties / 2, 0.0]])
    theta = metrics.bradley_terry(matrix, alpha=1e-9)
    assert theta.sum() == pytest.approx(0.0, abs=1e-9)
    assert theta[0] - theta[1] == pytest.approx(
        math.log((wins + ties / 2) / (losses + ties / 2)), abs=1e-4
    )


def test_bradley_terry_recovers_a_known_order_from_synthetic_comparisons():
    rng = np.random.default_rng(0)
    true_theta = np.array([-1.2, 0.9, -0.3, 1.6, 0.2])  # order: 3, 1, 4, 2, 0
    matrix = np.zeros((5, 5))
    for i, j in combinations(range(5), 2):
        p_i = 1.0 / (1.0 + math.exp(-(true_theta[i] - true_theta[j])))
        wins_i = rng.binomial(400, p_i)
        matrix[i, j] += wins_i
        matrix[j, i] += 400 - wins_i
    theta = metrics.bradley_terry(matrix)
    assert list(np.argsort(-theta)) == [3, 1, 4, 2, 0]
    np.testing.assert_allclose(theta, true_theta - true_theta.mean(), atol=0.15)


def test_bradley_terry_stays_finite_when_one_method_wins_everything():
    matrix = np.array([[0.0, 20.0, 20.0], [0.0, 0.0, 10.0], [0.0, 10.0, 0.0]])
    theta = metrics.bradley_terry(matrix, alpha=0.01)
    assert np.all(np.isfinite(theta)) and int(np.argmax(theta)) == 0


def test_bootstrap_weights_resample_all_questions():
    weights = metrics.bootstrap_weights(7, 50, seed=3)
    assert weights.shape == (50, 7) and np.all(weights.sum(axis=1) == 7)
    np.testing.assert_array_equal(weights, metrics.bootstrap_weights(7, 50, seed=3))


def test_bootstrap_win_rate_is_the_weighted_formula():
    judgments = [Judgment(0, "t", "b", "t"), Judgment(1, "t", "b", TIE),
                 Judgment(2, "t", "b", "b"), Judgment(3, "t", "b", INVALID)]
    tensor = metrics.outcome_tensor(judgments, ["t", "b"], [0, 1, 2, 3])
    weights = np.array([[1, 1, 1, 1], [3, 0, 1, 0], [0, 0, 0, 4]])
    rates = metrics.bootstrap_win_rate(tensor, 0, 1, weights)
    assert rates[0] == pytest.approx(1 / 3)
    assert rates[1] == pytest.approx(3 / 4)
    assert math.isnan(rates[2])  # only the invalid question drawn
    low, high = metrics.percentile_interval(rates, level=0.5)
    assert low <= high


def test_bootstrap_bradley_terry_with_unit_weights_is_the_point_estimate():
    judgments = [Judgment(q, "a", "b", "a" if q % 3 else "b") for q in range(9)]
    judgments += [Judgment(q, "b", "c", "b" if q % 2 else TIE) for q in range(9)]
    tensor = metrics.outcome_tensor(judgments, ["a", "b", "c"], list(range(9)))
    samples = metrics.bootstrap_bradley_terry(tensor, np.ones((2, 9), dtype=int))
    np.testing.assert_allclose(samples[0], metrics.bradley_terry(tensor.sum(axis=0)))


# Method 3 beats everyone and never loses: with almost no regularisation choix diverges.
DOMINATED = np.array([[0.0, 1.5, 1.5, 0.0], [4.5, 0.0, 1.5, 0.0], [4.5, 4.5, 0.0, 0.0],
                      [6.0, 6.0, 6.0, 0.0]])


def test_bradley_terry_that_does_not_converge_is_one_clear_error():
    with pytest.raises(metrics.BradleyTerryError, match=r"did not converge.*alpha=1e-30"):
        metrics.bradley_terry(DOMINATED, alpha=1e-30)
    assert np.all(np.isfinite(metrics.bradley_terry(DOMINATED, alpha=0.01)))


def test_bootstrap_replicates_whose_fit_fails_are_nan_rows_and_the_rest_are_kept():
    tensor = np.stack([DOMINATED, DOMINATED.T])  # question 1 reverses question 0
    weights = np.array([[1, 2], [1, 0], [2, 1]])
    samples = metrics.bootstrap_bradley_terry(tensor, weights, alpha=1e-30)
    assert np.isnan(samples[1]).all()
    assert np.all(np.isfinite(samples[[0, 2]]))
    np.testing.assert_allclose(samples[0], metrics.bradley_terry(DOMINATED + 2 * DOMINATED.T,
                                                                  alpha=1e-30))
    np.testing.assert_allclose(samples[2], metrics.bradley_terry(2 * DOMINATED + DOMINATED.T,
                                                                  alpha=1e-30))
    rows, failed = win_rate.ranking_rows(tensor, ["a", "b", "c", "d"], weights, alpha=1e-30)
    assert failed == 1
    assert sum(r["p_top"] for r in rows) == pytest.approx(1.0)  # over the 2 fitted replicates
    top = {r["method"]: r["p_top"] for r in rows}
    assert (top["a"], top["d"]) == pytest.approx((0.5, 0.5))  # the two fitted winners
    for row in rows:
        assert row["ci_low"] <= row["ci_high"]
