"""Length-controlled win rates as AlpacaEval 2 defines them (Dubois et al., 2024).

For one target/baseline pair over questions q with a valid outcome ``y_q`` (1 a target win,
0.5 a tie, 0 a loss), a logistic model of the judge's preference::

    logit P(target preferred | q) = theta + beta * tanh(delta_q / sd(delta)) + phi * d_q

``delta_q = len(target_q) - len(baseline_q)`` in characters, ``sd`` the sample standard
deviation over the pair's questions (ddof 1; with no spread the length term is 0), ``d_q`` a
per-question difficulty (omitted when there are too few other pairs, see
:func:`question_difficulty`). The length-controlled win rate is the model read off at zero
length difference, ``mean_q sigmoid(theta + phi * d_q)``; ``beta`` (``length_coef``) is
reported beside it: > 0 means the judge prefers the longer text. alpaca_eval's length
feature is ``tanh((len(baseline) - len(model)) / sd)``, so the weight it saves for
``np.tanh(std_delta_len)`` is ``-beta``: the same fit, the opposite sign.

The fit is alpaca_eval's ``glm_winrate.py`` with cross-validation off (``n_splits=0``): its
formula ``np.tanh(std_delta_len) + instruction_difficulty + not_gamed_baseline - 1`` has no
intercept of its own, and ``not_gamed_baseline`` (1 on every row of the model) is ``theta``'s
column, penalised like the others; the outcome is a probability, fitted by duplicating each
row with label 1 weighted ``y`` and label 0 weighted ``1 - y``; scikit-learn's
``LogisticRegression`` with an L1 penalty, ``liblinear``, ``fit_intercept=False`` and
``C = 100`` minimises ``C * sum_i w_i * logloss_i + |theta| + |beta| + |phi|`` (an L1 penalty
may set a weak coefficient to exactly 0). Here the solver's tolerance is 1e-10 (alpaca_eval
keeps liblinear's 1e-4), so the result is the optimum itself.

What stays different from alpaca_eval's default (``length_controlled_v1``): it picks ``C``
by 5-fold cross-validation (``LogisticRegressionCV``, folds grouped by question) where a run
here has far too few pairs for it; it adds the rows of two length-gamed versions of its
baseline (its answers made verbose and made concise, weighted 0.1 each) that anchor ``beta``; its
``d_q`` is one difficulty per instruction estimated beforehand from many models, where here it
comes from the target's other pairs of the same run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

C_PENALTY = 100.0
SOLVER_TOL = 1e-10  # liblinear's stopping tolerance (its default, alpaca_eval's: 1e-4)
ONE_CLASS_WEIGHT = 1e-12  # see fit_preference
# The target must face at least this many other baselines on a question for its difficulty
# to be estimated (leaving out the pair being fitted).
MIN_OTHER_BASELINES = 2


@dataclass(frozen=True)
class LengthControlled:
    """One pair's fit: the win rate at zero length difference and the coefficients."""

    lc_win_rate: float
    length_coef: float
    difficulty_coef: float  # NaN when no difficulty term was fitted
    n: int


NOT_FITTED = LengthControlled(float("nan"), float("nan"), float("nan"), 0)


def length_feature(delta: np.ndarray) -> np.ndarray:
    """``tanh(delta / sd(delta))`` with the sample standard deviation; zeros without spread.

    >>> length_feature(np.array([3.0, 3.0])).tolist()
    [0.0, 0.0]
    >>> np.round(length_feature(np.array([-1.0, 1.0])), 4).tolist()
    [-0.6089, 0.6089]
    """
    delta = np.asarray(delta, dtype=float)
    sd = float(delta.std(ddof=1)) if len(delta) > 1 else 0.0
    if not sd > 0:
        return np.zeros_like(delta)
    return np.tanh(delta / sd)


def design(delta: np.ndarray, difficulty: np.ndarray | None) -> np.ndarray:
    """Columns ``[1, tanh(delta / sd), d]`` (the last only with a difficulty), shape (Q, K)."""
    columns = [np.ones(len(delta)), length_feature(delta)]
    if difficulty is not None:
        columns.append(np.asarray(difficulty, dtype=float))
    return np.column_stack(columns)


def fit_preference(x: np.ndarray, y: np.ndarray, c: float = C_PENALTY) -> np.ndarray:
    """Coefficients of the L1-penalised logistic fit of probabilities ``y`` on ``x`` (no
    separate intercept), through scikit-learn's liblinear with rows duplicated as described
    above."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y, dtype=float)
    features = np.vstack([x, x])
    labels = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
    weights = np.concatenate([y, 1.0 - y])
    keep = weights > 0  # a zero-weight row adds nothing
    if len(set(labels[keep])) < 2:
        # One outcome only (all wins or all losses): liblinear, left with one class, labels it
        # wrongly when it is the losses. The other label's rows at a negligible weight keep
        # both classes; the optimum moves by far less than the solver's tolerance.
        keep = np.ones_like(keep)
        weights = np.maximum(weights, ONE_CLASS_WEIGHT)
    model = LogisticRegression(C=c, l1_ratio=1.0, solver="liblinear", fit_intercept=False,
                               tol=SOLVER_TOL, max_iter=10_000, random_state=123)
    model.fit(features[keep], labels[keep], sample_weight=weights[keep])
    return model.coef_[0]


def length_controlled(y: np.ndarray, len_target: np.ndarray, len_baseline: np.ndarray,
                      difficulty: np.ndarray | None = None) -> LengthControlled:
    """The length-controlled win rate of one pair (see the module docstring).

    ``y``: per-question outcome in {0, 0.5, 1}; lengths in characters; ``difficulty``: per
    question, or None. Fewer than two questions: nothing to fit (:data:`NOT_FITTED`).
    """
    y = np.asarray(y, dtype=float)
    if len(y) < 2:
        return NOT_FITTED
    delta = np.asarray(len_target, dtype=float) - np.asarray(len_baseline, dtype=float)
    x = design(delta, difficulty)
    coef = fit_preference(x, y)
    at_zero_length = x.copy()
    at_zero_length[:, 1] = 0.0
    rate = float(np.mean(1.0 / (1.0 + np.exp(-(at_zero_length @ coef)))))
    phi = float(coef[2]) if difficulty is not None else float("nan")
    return LengthControlled(rate, float(coef[1]), phi, len(y))


def question_difficulty(scores_by_baseline: dict[str, np.ndarray], baseline: str
                        ) -> np.ndarray | None:
    """Per-question difficulty for the target against ``baseline``, or None if too few pairs.

    AlpacaEval estimates each instruction's difficulty once, from many models. Here it comes
    from the target's outcomes against the *other* baselines on the same question
    (``scores_by_baseline[b][q]`` in {0, 0.5, 1}, NaN when invalid):
    ``d_q = logit((S_q + 0.5) / (N_q + 1))`` with ``S_q`` their sum and ``N_q`` their count,
    used when the target faces at least :data:`MIN_OTHER_BASELINES` other baselines.

    >>> s = {"a": np.array([1.0, 0.0]), "b": np.array([1.0, 0.5]), "c": np.array([0.0, 0.0])}
    >>> np.round(question_difficulty(s, "c"), 4).tolist()
    [1.6094, -0.6931]
    """
    others = [np.asarray(v, dtype=float) for k, v in scores_by_baseline.items() if k != baseline]
    if len(others) < MIN_OTHER_BASELINES:
        return None
    stacked = np.vstack(others)  # (B - 1, Q)
    total = np.nansum(stacked, axis=0)
    count = np.sum(~np.isnan(stacked), axis=0)
    share = (total + 0.5) / (count + 1.0)
    return np.log(share) - np.log1p(-share)
