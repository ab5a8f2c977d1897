"""The length-controlled win rate against alpaca_eval's own fit, written out step by step from
its ``metrics/glm_winrate.py`` (``get_length_controlled_winrate`` with the GLM
``length_controlled_v1``'s formula, cross-validation off: ``fit_LogisticRegressionCV`` with
``n_splits=0``), on simulated judgments: the same rate, and ``length_coef`` the negative of
alpaca_eval's weight on ``np.tanh(std_delta_len)``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evals.judge.length_control import length_controlled  # noqa: E402

TIGHT = 1e-10  # liblinear's tolerance in length_control.py; alpaca_eval keeps 1e-4


def alpaca_eval_glm(preference, output_1, output_2, instruction_difficulty,
                    tol: float = TIGHT) -> tuple[float, dict[str, float]]:
    """alpaca_eval's length-controlled rate (in [0, 1]) and saved weights, by its steps:
    ``output_1`` is the baseline's text, ``output_2`` the model's, ``preference`` 1 (baseline
    wins), 2 (model wins) or 0 (tie); no length-gamed baselines
    (``regularize_to_baseline_lambda`` None). ``tol``: liblinear's (alpaca_eval keeps 1e-4)."""
    from sklearn.linear_model import LogisticRegression

    len_1 = np.array([len(t) for t in output_1], dtype=float)
    len_2 = np.array([len(t) for t in output_2], dtype=float)
    delta = len_1 - len_2
    std_delta_len = delta / delta.std(ddof=1)  # pandas' Series.std
    pref = np.asarray(preference, dtype=float)
    pref = np.where(pref == 0.0, 1.5, pref) - 1  # replace({0.0: 1.5}) - 1
    not_gamed_baseline = np.ones(len(pref))
    # "np.tanh(std_delta_len) + instruction_difficulty + not_gamed_baseline.astype(float) - 1"
    names = ["np.tanh(std_delta_len)", "instruction_difficulty",
             "not_gamed_baseline.astype(float)"]
    train = np.column_stack([np.tanh(std_delta_len), instruction_difficulty,
                             not_gamed_baseline])
    test = np.column_stack([np.tanh(np.zeros(len(pref))), instruction_difficulty,
                            not_gamed_baseline])
    # is_ytrue_proba: the rows once with label 1 (weight p), once with label 0 (weight 1 - p)
    x = np.vstack([train, train])
    y = np.concatenate([np.ones(len(pref)), np.zeros(len(pref))])
    sample_weight = np.concatenate([pref, 1 - pref])
    model = LogisticRegression(C=100, random_state=123, dual=False, l1_ratio=1.0,
                               solver="liblinear", fit_intercept=False, tol=tol)
    model.fit(x, y, sample_weight=sample_weight)
    rate = float(model.predict_proba(test)[:, 1].mean())
    return rate, dict(zip(names, model.coef_[0].tolist(), strict=True))


def simulated_judgments(seed: int, n: int):
    """Texts of a model and a baseline and the verdicts of a judge that likes length."""
    rng = np.random.default_rng(seed)
    model = ["m" * int(k) for k in rng.integers(20, 400, n)]
    baseline = ["b" * int(k) for k in rng.integers(20, 400, n)]
    difficulty = rng.normal(size=n)
    longer = np.array([len(m) - len(b) for m, b in zip(model, baseline, strict=True)]) / 200
    p = 1 / (1 + np.exp(-(0.3 + longer - 0.5 * difficulty)))
    draw = rng.random(n)
    outcome = np.where(draw < p - 0.1, 1.0, np.where(draw < p + 0.1, 0.5, 0.0))
    return outcome, model, baseline, difficulty


@pytest.mark.parametrize(("seed", "n"), [(0, 12), (1, 30), (2, 80)])
def test_lc_rate_and_length_coef_are_alpaca_evals_without_cross_validation(seed, n):
    outcome, model, baseline, difficulty = simulated_judgments(seed, n)
    preference = np.select([outcome == 1.0, outcome == 0.0], [2.0, 1.0], 0.0)
    rate, weights = alpaca_eval_glm(preference, baseline, model, difficulty)
    ours = length_controlled(outcome, [len(t) for t in model], [len(t) for t in baseline],
                             difficulty)
    assert ours.lc_win_rate == pytest.approx(rate, abs=1e-7)
    assert ours.length_coef == pytest.approx(-weights["np.tanh(std_delta_len)"], abs=1e-6)
    assert ours.difficulty_coef == pytest.approx(weights["instruction_difficulty"], abs=1e-6)
    # alpaca_eval's own tolerance (1e-4) stops near the same optimum
    loose, _ = alpaca_eval_glm(preference, baseline, model, difficulty, tol=1e-4)
    assert ours.lc_win_rate == pytest.approx(loose, abs=1e-4)


def test_a_judge_that_prefers_longer_texts_gets_a_positive_length_coef():
    outcome, model, baseline, difficulty = simulated_judgments(3, 200)
    ours = length_controlled(outcome, [len(t) for t in model], [len(t) for t in baseline],
                             difficulty)
    assert ours.length_coef > 0.5  # alpaca_eval's weight on its length term is negative
