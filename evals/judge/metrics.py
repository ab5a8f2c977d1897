"""Pure metrics over judge verdicts: win/tie/lose, Bradley-Terry via ``choix``, bootstrap CIs.

A judgment is ``(index, method_a, method_b, outcome)`` with ``outcome`` the winning
method's name, ``"tie"`` or ``"invalid"``. Invalid judgments (the judge never gave a
parseable answer) are counted apart and enter no rate, no ranking and no interval.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from evals.judge.judge import INVALID, TIE


@dataclass(frozen=True)
class Judgment:
    """One judged comparison, already mapped back from the presentation order."""

    index: int
    method_a: str
    method_b: str
    outcome: str  # method_a, method_b, TIE or INVALID


@dataclass(frozen=True)
class WinTieLose:
    """Counts of ``target`` against one baseline.

    Rates are over valid judgments: ``win_rate = win / (win + tie + lose)`` (NaN if none).
    """

    win: int
    tie: int
    lose: int
    invalid: int

    @property
    def valid(self) -> int:
        return self.win + self.tie + self.lose

    def rate(self, count: int) -> float:
        return count / self.valid if self.valid else float("nan")


def win_tie_lose(judgments: Iterable[Judgment], target: str, baseline: str) -> WinTieLose:
    """Count the judgments between ``target`` and ``baseline`` (in either slot)."""
    counts = {"win": 0, "tie": 0, "lose": 0, "invalid": 0}
    for j in judgments:
        if {j.method_a, j.method_b} != {target, baseline}:
            continue
        if j.outcome == INVALID:
            counts["invalid"] += 1
        elif j.outcome == TIE:
            counts["tie"] += 1
        elif j.outcome == target:
            counts["win"] += 1
        else:
            counts["lose"] += 1
    return WinTieLose(**counts)


def outcome_tensor(
    judgments: Iterable[Judgment], methods: Sequence[str], indices: Sequence[int]
) -> np.ndarray:
    """Per-question win credit ``W[q, i, j]`` (shape ``(Q, M, M)``).

    ``W[q, i, j] = 1`` if method i beat method j on question q; a tie gives
    ``W[q, i, j] = W[q, j, i] = 0.5`` (half a win each way); invalid gives nothing.
    Summing over q gives the comparison matrix that :func:`bradley_terry` fits.
    """
    position = {m: k for k, m in enumerate(methods)}
    row = {index: q for q, index in enumerate(indices)}
    tensor = np.zeros((len(indices), len(methods), len(methods)))
    for j in judgments:
        q, a, b = row[j.index], position[j.method_a], position[j.method_b]
        if j.outcome == TIE:
            tensor[q, a, b] += 0.5
            tensor[q, b, a] += 0.5
        elif j.outcome == j.method_a:
            tensor[q, a, b] += 1.0
        elif j.outcome == j.method_b:
            tensor[q, b, a] += 1.0
    return tensor


class BradleyTerryError(ValueError):
    """choix could not fit Bradley-Terry: no convergence, or a non-finite estimate."""


def bradley_terry(comparisons: np.ndarray, alpha: float = 0.01) -> np.ndarray:
    """Bradley-Terry log-strengths ``theta`` (mean 0) from ``comparisons[i, j]`` = wins of i over j.

    Model: ``P(i beats j) = 1 / (1 + exp(-(theta_i - theta_j)))``, fitted by choix's
    iterative Luce spectral ranking (``ilsr_pairwise_dense``), which reaches the
    maximum-likelihood estimate; fractional counts (half-wins from ties) are allowed.
    ``alpha > 0`` adds a small pseudo-count so the estimate stays finite when a method
    wins or loses every comparison. For two methods with ``alpha -> 0``:
    ``theta_0 - theta_1 = log(comparisons[0, 1] / comparisons[1, 0])``.
    Raises :class:`BradleyTerryError` when the fit fails (e.g. a method that never loses
    with a tiny ``alpha``: its strength runs off to infinity).
    """
    import choix  # scipy-backed; imported on first use to keep the CLI start fast

    matrix = np.asarray(comparisons, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"comparisons must be (M, M), got {matrix.shape}")
    try:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            theta = choix.ilsr_pairwise_dense(matrix, alpha=alpha, max_iter=1000)
    except (RuntimeError, ValueError, np.linalg.LinAlgError) as exc:
        raise BradleyTerryError(
            f"{str(exc).rstrip('.').lower()} (choix ilsr_pairwise_dense, alpha={alpha:g})"
        ) from None
    if not np.all(np.isfinite(theta)):
        raise BradleyTerryError(f"the estimate is not finite (choix, alpha={alpha:g})")
    return theta - theta.mean()


def bootstrap_weights(n_questions: int, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, Q)`` resampling counts: question q drawn ``w[b, q]`` times in replicate b.

    Each row is Multinomial(Q, uniform), i.e. Q questions drawn with replacement.
    """
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_questions, np.full(n_questions, 1.0 / n_questions), size=n_boot)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval along axis 0, ignoring NaN replicates."""
    tail = 100.0 * (1.0 - level) / 2.0
    low = np.nanpercentile(samples, tail, axis=0)
    high = np.nanpercentile(samples, 100.0 - tail, axis=0)
    return low, high


def bootstrap_win_rate(
    tensor: np.ndarray, target: int, baseline: int, weights: np.ndarray
) -> np.ndarray:
    """Win rate of ``target`` over ``baseline`` in each bootstrap replicate, shape ``(B,)``.

    Per replicate b: ``sum_q w[b,q] * win_q / sum_q w[b,q] * valid_q`` where ``win_q`` is 1
    for a win and ``valid_q`` is 1 for a valid judgment (win, tie or lose) on question q.
    """
    wins = (tensor[:, target, baseline] == 1.0).astype(float)
    valid = (tensor[:, target, baseline] + tensor[:, baseline, target] > 0).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ wins) / (weights @ valid)


def bootstrap_bradley_terry(
    tensor: np.ndarray, weights: np.ndarray, alpha: float = 0.01
) -> np.ndarray:
    """Bradley-Terry ``theta`` per bootstrap replicate, shape ``(B, M)``.

    Replicate b fits ``sum_q w[b, q] * W[q]``, i.e. the comparison matrix of the resampled
    questions (all judgments of a question move together). A replicate whose fit fails
    (:class:`BradleyTerryError`) is a row of NaN.
    """
    matrices = np.tensordot(weights, tensor, axes=(1, 0))  # (B, M, M)
    samples = np.full(matrices.shape[:2], np.nan)
    for b, matrix in enumerate(matrices):
        try:
            samples[b] = bradley_terry(matrix, alpha)
        except BradleyTerryError:
            pass
    return samples
