"""Repetition penalty and no-repeat-n-gram as pure functions on (B, V) scores, shared by every
method so that a penalty means the same thing for base, pref and beam (`model.generate`) as
for LA and Amulet (the two-prompt engine).

Scores are log-space: log-probabilities for single-prompt methods, the combined score for
two-prompt methods. A row's context is its own prompt (no padding) followed by its generated
tokens. transformers applies its repetition penalty to raw logits, which a two-prompt method
does not have; applied to log-probabilities instead, the same function serves every method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Penalties:
    """`repetition_penalty` 1.0 and `no_repeat_ngram_size` 0 are neutral (no change)."""

    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    @property
    def active(self) -> bool:
        return self.repetition_penalty != 1.0 or self.no_repeat_ngram_size > 0


def penalise_repeats(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty on the tokens a row has seen.

    For `seen[b, v]`: `s -> s * penalty` if `s < 0`, else `s / penalty`; other entries kept.
    Shapes: scores (B, V), seen (B, V) bool -> (B, V). `penalty` > 0; 1.0 changes nothing.
    """
    if scores.shape != seen.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and seen {tuple(seen.shape)} differ")
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def banned_ngram_tokens(context: list[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram of `context` if appended to it.

    With `prefix = context[-(n - 1):]`: every `context[i + n - 1]` such that
    `context[i : i + n - 1] == prefix`. Empty when `n < 1` or the context is shorter than n.
    """
    if n < 1 or len(context) < n:
        return []
    prefix = context[len(context) - n + 1:] if n > 1 else []
    return [
        context[i + n - 1]
        for i in range(len(context) - n + 1)
        if context[i: i + n - 1] == prefix
    ]


def ban_repeated_ngrams(scores: torch.Tensor, contexts: list[list[int]], n: int) -> torch.Tensor:
    """Scores with `-inf` for every token that would repeat an n-gram of its row's context.

    Shapes: scores (B, V), `contexts` B lists of ids -> (B, V).
    """
    if len(contexts) != scores.shape[0]:
        raise ValueError(f"{len(contexts)} contexts for {scores.shape[0]} rows of scores")
    banned = torch.zeros_like(scores, dtype=torch.bool)
    for row, context in enumerate(contexts):
        tokens = banned_ngram_tokens(context, n)
        if tokens:
            banned[row, tokens] = True
    return scores.masked_fill(banned, float("-inf"))


def apply_penalties(
    scores: torch.Tensor, contexts: list[list[int]], penalties: Penalties
) -> torch.Tensor:
    """Both penalties, repetition first (as transformers orders them). (B, V) -> (B, V)."""
    if penalties.repetition_penalty != 1.0:
        seen = torch.zeros_like(scores, dtype=torch.bool)
        for row, context in enumerate(contexts):
            if context:
                seen[row, context] = True
        scores = penalise_repeats(scores, seen, penalties.repetition_penalty)
    if penalties.no_repeat_ngram_size > 0:
        scores = ban_repeated_ngrams(scores, contexts, penalties.no_repeat_ngram_size)
    return scores
