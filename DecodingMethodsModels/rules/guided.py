"""The pure rules of reward-guided decoding (ARGS and PAD) on the k candidates of each row:
fp32 (B, k) tensors in, (B, k) scores or (B,) choices out, no model and no I/O.

z_k are the decoding model's raw logits of its top-k candidates; the guide's values of the same
candidates come from the engines (engines/guides.py). Each rule's docstring states its formula;
tests/test_reward_guided.py and tests/test_pad_cross_tokenizer.py evaluate them literally.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from DecodingMethodsModels.rules.combine import NEG_FLOOR
from DecodingMethodsModels.rules.sampling import SamplingSettings, choose_tokens

MODES = ("greedy", "topk")

ScoreRule = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def check_candidates(candidate_logits: torch.Tensor, values: torch.Tensor) -> None:
    if candidate_logits.dim() != 2 or candidate_logits.shape != values.shape:
        raise ValueError(
            "expected candidate logits and guide values of the same shape (B, k), got "
            f"{tuple(candidate_logits.shape)} and {tuple(values.shape)}"
        )


def args_scores(
    candidate_logits: torch.Tensor, rewards: torch.Tensor, weight: float
) -> torch.Tensor:
    """ARGS: `score_i = z_i + w r_i` for the k candidates of each row.

    `candidate_logits` z (B, k) are the decoding model's raw logits of the candidates, `rewards`
    r (B, k) the reward model's scalar for [prompt, tokens so far, candidate i]. Returns fp32
    (B, k). w = 0 gives z itself.
    """
    check_candidates(candidate_logits, rewards)
    z = candidate_logits.float()
    if weight == 0:
        return z
    return z + weight * rewards.float()


def pad_scores(
    candidate_logits: torch.Tensor, guide_logits: torch.Tensor, weight: float
) -> torch.Tensor:
    """PAD: `score = z_k + w (log_softmax_k(u_k) - log_softmax_k(z_k))`.

    `candidate_logits` z_k (B, k) and `guide_logits` u_k (B, k) are the decoding model's and the
    PersRM's raw logits of the same k candidates; both log-softmaxes run over the k candidates
    only, in fp32. Returns fp32 (B, k); up to a per-row constant it equals (1 - w) z_k + w u_k.
    w = 0 gives z itself. A -inf logit is floored (combine.NEG_FLOOR) so that w * (-inf - -inf)
    never yields NaN.
    """
    check_candidates(candidate_logits, guide_logits)
    z = candidate_logits.float()
    if weight == 0:
        return z
    guide = torch.log_softmax(guide_logits.float(), dim=-1).clamp(min=NEG_FLOOR)  # (B, k)
    own = torch.log_softmax(z, dim=-1).clamp(min=NEG_FLOOR)  # (B, k)
    return z + weight * (guide - own)


def choose_candidates(
    scores: torch.Tensor, mode: str, sample_temp: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Position of the chosen candidate per row, (B, k) -> (B,).

    "greedy": argmax of the scores; "topk": one draw from softmax(scores / sample_temp).
    """
    if mode not in MODES:
        raise ValueError(f"unknown selection mode {mode!r}; use one of {MODES}")
    sampling = SamplingSettings(do_sample=mode == "topk", temperature=sample_temp)
    return choose_tokens(scores, sampling, generator)


def pad_retokenized_scores(
    candidate_logits: torch.Tensor, guide_logits: torch.Tensor, weight: float
) -> torch.Tensor:
    """PAD's second rule: `score = z_k + w (u_k - z_k)`, i.e. (1 - w) z_k + w u_k.

    `candidate_logits` z_k (B, k) are the decoding model's raw logits of its k candidates,
    `guide_logits` u_k (B, k) the PersRM's raw logits of each candidate's mapped id; no
    log-softmax on either (as PAD.py). Returns fp32 (B, k); w = 0 gives z itself. A -inf is
    floored (combine.NEG_FLOOR) so that -inf - -inf never yields NaN.
    """
    check_candidates(candidate_logits, guide_logits)
    z = candidate_logits.float()
    if weight == 0:
        return z
    u = guide_logits.float().clamp(min=NEG_FLOOR)
    return z + weight * (u - z.clamp(min=NEG_FLOOR))
