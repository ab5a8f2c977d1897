"""Pure math of the two-prompt methods on fp32 log-prob tensors of shape (B, V).

Inputs are `pref_logprobs = log p(. | preference prompt, y<j)` and
`base_logprobs = log p(. | base prompt, y<j)`, both from log_softmax in fp32.
Outputs are unnormalised scores whose argmax (or softmax) picks the next token.
Nothing here touches a model, a device choice or a file.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

CombineRule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# A log-prob of -inf (a token masked out by the model) is replaced by this floor before any
# arithmetic, so that -inf - -inf never yields NaN; tokens the preference prompt forbids are
# set back to -inf in every output.
NEG_FLOOR = -1.0e9


def _check_pair(pref_logprobs: torch.Tensor, base_logprobs: torch.Tensor) -> None:
    if pref_logprobs.dim() != 2 or pref_logprobs.shape != base_logprobs.shape:
        raise ValueError(
            "expected pref_logprobs and base_logprobs of the same shape (B, V), got "
            f"{tuple(pref_logprobs.shape)} and {tuple(base_logprobs.shape)}"
        )
    if pref_logprobs.dtype != torch.float32 or base_logprobs.dtype != torch.float32:
        raise ValueError(
            "expected float32 (B, V) pref_logprobs and base_logprobs, got "
            f"{pref_logprobs.dtype} and {base_logprobs.dtype}; upcast logits before log_softmax"
        )


def _floored(logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs.clamp(min=NEG_FLOOR)


def _restore_forbidden(scores: torch.Tensor, pref_logprobs: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(torch.isneginf(pref_logprobs), float("-inf"))


def contrast(pref_logprobs: torch.Tensor, base_logprobs: torch.Tensor) -> torch.Tensor:
    """`log p_pref - log p_base`, with -inf - -inf defined as 0 (the token is impossible anyway).

    Shapes (B, V) -> (B, V).
    """
    _check_pair(pref_logprobs, base_logprobs)
    return _floored(pref_logprobs) - _floored(base_logprobs)


def linear_alignment(
    pref_logprobs: torch.Tensor, base_logprobs: torch.Tensor, ratio: float
) -> torch.Tensor:
    """Linear Alignment: `z = log p_pref + ratio * (log p_pref - log p_base)`.

    Shapes (B, V), (B, V) -> (B, V). `ratio` >= 0; ratio 0 is plain preference decoding.
    """
    _check_pair(pref_logprobs, base_logprobs)  # before any arithmetic: fp16 cannot hold the floor
    scores = _floored(pref_logprobs) + ratio * contrast(pref_logprobs, base_logprobs)
    return _restore_forbidden(scores, pref_logprobs)


def amulet_ratio(iterations: int, alpha: float, player_lambda: float, eta: float) -> float:
    """The scalar k with Amulet(T) == Linear Alignment with ratio k (paper, Algorithm 1).

    `k_1 = 0`,
    `k_{t+1} = (alpha * (1 + mean(k_1..k_t)) + k_t / (eta t)) / (lambda + 1 / (eta t))`,
    and the result is `k_{T+1}`. Legal ranges: T >= 0, eta > 0, lambda > 0, alpha >= 0.
    Computed in float64; it is a property of the hyperparameters, not of any token.
    """
    if iterations < 0 or eta <= 0 or player_lambda <= 0 or alpha < 0:
        raise ValueError(
            f"amulet_ratio needs T >= 0, eta > 0, lambda > 0, alpha >= 0; got T={iterations}, "
            f"eta={eta}, lambda={player_lambda}, alpha={alpha}"
        )
    k, k_sum = 0.0, 0.0
    for t in range(1, iterations + 1):
        k_sum += k
        step = 1.0 / (eta * t)
        k = (alpha * (1.0 + k_sum / t) + k * step) / (player_lambda + step)
    return k


def amulet_closed_form(
    pref_logprobs: torch.Tensor, base_logprobs: torch.Tensor, ratio: float
) -> torch.Tensor:
    """Amulet's T FTRL iterations collapsed: `x_{T+1} = x_1 + k (x_1 - b)` up to a row constant.

    `ratio` is `amulet_ratio(T, alpha, lambda, eta)`, computed once per run.
    Shapes (B, V), (B, V) -> (B, V), normalised with log_softmax.
    """
    return torch.log_softmax(linear_alignment(pref_logprobs, base_logprobs, ratio), dim=-1)


def amulet_iterative(
    pref_logprobs: torch.Tensor,
    base_logprobs: torch.Tensor,
    iterations: int,
    alpha: float,
    player_lambda: float,
    eta: float,
) -> torch.Tensor:
    """Amulet's per-token FTRL update, iterated literally (paper, Algorithm 1).

    With `x_1 = log p_pref` and `b = log p_base`, for t = 1..T:
        `Q_t = alpha * (x_t - b)`
        `x_{t+1} = log_softmax((lambda x_1 + (Q_1+...+Q_t)/t + x_t/(eta t)) / (lambda + 1/(eta t)))`
    and returns `x_{T+1}` (B, V). Keeps the running sum of Q, not the (B, T+1, V) history; the
    final log_softmax, which the reference code skips at t = T, changes no softmax or argmax.
    Every iteration is computed; the inputs are never modified.
    """
    _check_pair(pref_logprobs, base_logprobs)
    x_first = _floored(pref_logprobs)  # (B, V), a new tensor
    base = _floored(base_logprobs)  # (B, V)
    if iterations == 0:
        return _restore_forbidden(torch.log_softmax(x_first, dim=-1), pref_logprobs)
    # Three (B, V) buffers updated in place: written with fresh temporaries, the loop would
    # allocate ten (B, V) tensors per iteration, and allocation (page faults on a large
    # vocabulary) cost more than the arithmetic.
    x = x_first.clone()  # x_t
    q_sum = torch.zeros_like(x_first)  # Q_1 + ... + Q_t
    scratch = torch.empty_like(x_first)
    for t in range(1, iterations + 1):
        torch.sub(x, base, out=scratch)
        q_sum.add_(scratch, alpha=alpha)  # += Q_t = alpha (x_t - b)
        step = 1.0 / (eta * t)
        denominator = player_lambda + step
        # (lambda x_1 + q_sum / t + x_t step) / denominator, one term at a time
        torch.mul(x, step / denominator, out=scratch)
        scratch.add_(x_first, alpha=player_lambda / denominator)
        scratch.add_(q_sum, alpha=1.0 / (t * denominator))
        torch.log_softmax(scratch, dim=-1, out=x)  # x_{t+1}
    return _restore_forbidden(x, pref_logprobs)


def la_rule(ratio: float) -> CombineRule:
    """The LA combination as a rule for the decode engine."""
    return partial(linear_alignment, ratio=ratio)


def amulet_rule(
    iterations: int, alpha: float, player_lambda: float, eta: float, solver: str = "closed_form"
) -> CombineRule:
    """The Amulet combination as a rule for the decode engine, by either solver."""
    if solver == "closed_form":
        return partial(
            amulet_closed_form, ratio=amulet_ratio(iterations, alpha, player_lambda, eta)
        )
    if solver == "iterative":
        return partial(
            amulet_iterative,
            iterations=iterations,
            alpha=alpha,
            player_lambda=player_lambda,
            eta=eta,
        )
    raise ValueError(f"unknown Amulet solver {solver!r}; use 'closed_form' or 'iterative'")
