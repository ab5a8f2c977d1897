"""Choosing the next token from a (B, V) score tensor: greedy, or seeded sampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingSettings:
    """`do_sample` False means argmax; otherwise temperature, then top-k, then top-p."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0


def warp_scores(scores: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """Temperature, top-k and top-p (nucleus) filtering, as transformers' warpers do.

    `scores / temperature`; keep the k largest; keep the smallest set of tokens whose softmax
    mass reaches `top_p` (always at least one). Shapes (B, V) -> (B, V); filtered entries -inf.
    """
    scores = scores / settings.temperature
    if settings.top_k is not None and 0 < settings.top_k < scores.shape[-1]:
        kth = torch.topk(scores, settings.top_k, dim=-1).values[:, -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if settings.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        mass_before = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        mass_before = mass_before - torch.softmax(sorted_scores, dim=-1)
        drop_sorted = mass_before >= settings.top_p  # first token never dropped
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def unusable_rows(scores: torch.Tensor) -> torch.Tensor:
    """Rows from which no token can be chosen honestly: any NaN, or no finite score.

    (B, V) -> (B,) bool, on the scores' device (no host sync).
    """
    return torch.isnan(scores).any(dim=-1) | ~torch.isfinite(scores).any(dim=-1)


def choose_tokens(
    scores: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None
) -> torch.Tensor:
    """Next token per row, (B, V) -> (B,).

    Rows that `unusable_rows` flags get an arbitrary token and must be rejected by the caller;
    they are neutralised before sampling so that `torch.multinomial` never sees NaN (on CUDA
    that is a device-side assert, which kills the process before any message).
    """
    if not settings.do_sample:
        return scores.argmax(dim=-1)
    scores = scores.masked_fill(unusable_rows(scores).unsqueeze(-1), 0.0)
    probs = torch.softmax(warp_scores(scores, settings), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
