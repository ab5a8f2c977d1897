"""CoSteer's per-token rule (Amulet's successor: a small local model steers a large one), on
fp32 log-prob tensors of shape (B, V).

Inputs, per token: `b = log p_LLM(. | plain prompt, y<j)`, and from the small model (SLM)
`pers = log p_SLM(. | personalised prompt, y<j)` and `plain = log p_SLM(. | plain prompt, y<j)`,
all log_softmax in fp32. With `D = pers - plain` and `pi_0 = b`, for t = 1..T:

    U_t  = alpha (pi_{t-1} - b) + beta D
    S_t  = U_1 + ... + U_t
    pi_t = log_softmax((t lambda b + S_t + pi_{t-1} / eta) / (t lambda + 1 / eta))

and the token comes from `pi_T`.

**The closed form.** Every `pi_t` is `b + c_t D` plus a per-row constant that softmax ignores.
By induction: `pi_0 = b` (`c_0 = 0`). If `pi_{s-1} = b + c_{s-1} D + const` for s <= t, then
`U_s = (alpha c_{s-1} + beta) D + const`, so `S_t = (sum_{s<=t} (alpha c_{s-1} + beta)) D +
const`, and the numerator of `pi_t` is `(t lambda + 1/eta) b + (sum_{s<=t} (alpha c_{s-1} + beta)
+ c_{t-1} / eta) D + const`: divided by `t lambda + 1/eta`, b keeps weight 1 and

    c_t = (sum_{s<=t} (alpha c_{s-1} + beta) + c_{t-1} / eta) / (t lambda + 1 / eta);

log_softmax adds only a row constant. Hence `pi_T = log_softmax(b + c_T D)`: CoSteer is
proxy-tuning with the fixed ratio `c_T` (1.7833 at the defaults T=20, alpha=2, beta=1,
lambda=2, eta=10). When the SLM is the LLM, `b = plain`, so `b + c_T D = pers + (c_T - 1)
(pers - plain)`: Linear Alignment on the personalised prompt with ratio `c_T - 1`.
For alpha < lambda, c_T tends to beta / (lambda - alpha); for alpha = lambda it grows like
(beta / lambda) ln T; for alpha > lambda it diverges.

Forbidden tokens: a log-prob of -inf is floored before any arithmetic (no -inf - -inf), and a
token the LLM's plain prompt or the SLM's personalised prompt forbids is -inf in the output.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from DecodingMethodsModels.rules.combine import NEG_FLOOR

# (LLM plain, SLM personalised, SLM plain) log-probs -> scores, all (B, V)
CoSteerRule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def costeer_ratio(iterations: int, alpha: float, beta: float, player_lambda: float,
                  eta: float) -> float:
    """The scalar c_T with CoSteer(T) == log_softmax(b + c_T D) (module docstring).

    `c_0 = 0`, `c_t = (sum_{s<=t} (alpha c_{s-1} + beta) + c_{t-1} / eta) / (t lambda + 1/eta)`.
    Legal ranges: T >= 0, alpha >= 0, lambda > 0, eta > 0 (any beta). Computed in float64.
    """
    if iterations < 0 or eta <= 0 or player_lambda <= 0 or alpha < 0:
        raise ValueError(
            f"costeer_ratio needs T >= 0, alpha >= 0, lambda > 0, eta > 0; got T={iterations}, "
            f"alpha={alpha}, lambda={player_lambda}, eta={eta}")
    c, utility_sum = 0.0, 0.0
    for t in range(1, iterations + 1):
        utility_sum += alpha * c + beta  # the D-coefficient of U_t, from c_{t-1}
        c = (utility_sum + c / eta) / (t * player_lambda + 1.0 / eta)
    return c


def _check(tensors: tuple[torch.Tensor, ...]) -> None:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1 or tensors[0].dim() != 2:
        raise ValueError("expected LLM plain, SLM personalised and SLM plain log-probs of one "
                         f"shape (B, V), got {[tuple(t.shape) for t in tensors]}")
    if any(t.dtype != torch.float32 for t in tensors):
        raise ValueError(f"expected float32 (B, V) log-probs, got {[t.dtype for t in tensors]}; "
                         "upcast logits before log_softmax")


def _forbidden(base: torch.Tensor, pers: torch.Tensor) -> torch.Tensor:
    return torch.isneginf(base) | torch.isneginf(pers)  # (B, V)


def costeer_closed_form(base_logprobs: torch.Tensor, pers_logprobs: torch.Tensor,
                        plain_logprobs: torch.Tensor, ratio: float) -> torch.Tensor:
    """`pi_T = log_softmax(b + c_T (pers - plain))`, `ratio` = costeer_ratio(...), computed once.

    Shapes (B, V) x 3 -> (B, V); the inputs are never modified.
    """
    _check((base_logprobs, pers_logprobs, plain_logprobs))
    delta = pers_logprobs.clamp(min=NEG_FLOOR) - plain_logprobs.clamp(min=NEG_FLOOR)  # D
    scores = base_logprobs.clamp(min=NEG_FLOOR) + ratio * delta
    scores = scores.masked_fill(_forbidden(base_logprobs, pers_logprobs), float("-inf"))
    return torch.log_softmax(scores, dim=-1)


def costeer_iterative(base_logprobs: torch.Tensor, pers_logprobs: torch.Tensor,
                      plain_logprobs: torch.Tensor, iterations: int, alpha: float, beta: float,
                      player_lambda: float, eta: float) -> torch.Tensor:
    """CoSteer's T steps literally (module docstring), with a running sum S_t; returns pi_T
    (B, V), log-normalised. T = 0 returns log_softmax(b)."""
    _check((base_logprobs, pers_logprobs, plain_logprobs))
    base = base_logprobs.clamp(min=NEG_FLOOR)  # b, a new tensor
    delta = pers_logprobs.clamp(min=NEG_FLOOR) - plain_logprobs.clamp(min=NEG_FLOOR)  # D
    policy = base.clone()  # pi_0 = b
    utility_sum = torch.zeros_like(base)  # S_t
    for t in range(1, iterations + 1):
        utility_sum += alpha * (policy - base) + beta * delta  # += U_t
        denominator = t * player_lambda + 1.0 / eta
        policy = torch.log_softmax(
            (t * player_lambda * base + utility_sum + policy / eta) / denominator, dim=-1)
    policy = policy.masked_fill(_forbidden(base_logprobs, pers_logprobs), float("-inf"))
    return torch.log_softmax(policy, dim=-1)


def costeer_rule(iterations: int, alpha: float, beta: float, player_lambda: float, eta: float,
                 solver: str = "closed_form") -> CoSteerRule:
    """CoSteer as a rule `(LLM plain, SLM personalised, SLM plain) -> scores`, by either
    solver ("closed_form": one precomputed c_T; "iterative": the T steps at every token)."""
    if solver == "closed_form":
        ratio = costeer_ratio(iterations, alpha, beta, player_lambda, eta)
        return partial(costeer_closed_form, ratio=ratio)
    if solver == "iterative":
        return partial(costeer_iterative, iterations=iterations, alpha=alpha, beta=beta,
                       player_lambda=player_lambda, eta=eta)
    raise ValueError(f"unknown CoSteer solver {solver!r}; use 'closed_form' or 'iterative'")


def on_one_model(rule: CoSteerRule) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The rule when the SLM is the LLM: its plain prompt is the LLM's, so two rows suffice;
    the result takes (personalised, plain) log-probs as the two-prompt engine hands them."""
    def combine(pers_logprobs: torch.Tensor, plain_logprobs: torch.Tensor) -> torch.Tensor:
        return rule(plain_logprobs, pers_logprobs, plain_logprobs)
    return combine
