"""transformers' beam search (`generate(num_beams=n)`, greedy, its default `length_penalty` 1.0
and `early_stopping` False) as bookkeeping over each step's top log-probs, for one question.

The hf backend's `--method beam` is `model.generate`. A backend that only gives the top
log-probs of each running beam's next token (vLLM) runs this bookkeeping instead and gets the
same answer. Per question and step, with g tokens generated so far:

- candidates: every running beam b and token t with score s_b + log p(t | beam b), where s_b
  sums the beam's log-probs in fp32; the best K = max(2, 1 + #EOS) * n of them are kept (the
  global best K are among each beam's own best K, so that many log-probs per beam suffice);
- a candidate "hits" when t is an EOS id or g + 1 = max_new_tokens;
- the next running beams: the best n candidates that do not hit;
- among the best n candidates, those that hit are finished hypotheses with score s / (g + 1)
  ** length_penalty; the best n hypotheses are kept;
- once n hypotheses are kept, a question closes when its best running beam's s / (g + 1) **
  length_penalty is no better than the worst kept hypothesis (transformers' heuristic for
  `early_stopping=False`); a closed question gains nothing more;
- the answer is the best hypothesis.

Each question is independent of the others in its batch, as in transformers. Ties are broken
as `torch.topk` breaks them on CPU: the lower flat index (beam * V + token) first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def candidates_per_beam(num_beams: int, eos_ids: list[int]) -> int:
    """K: how many candidates transformers keeps each step, and so how many top log-probs of
    each running beam are needed."""
    return max(2, 1 + len(eos_ids)) * num_beams


@dataclass
class Beam:
    tokens: list[int]
    score: np.float32  # the sum of the tokens' log-probs, accumulated in fp32


@dataclass
class BeamSearch:
    """One question's beam search. `running` are the beams whose next-token log-probs the
    next step needs (one beam, no tokens, at the start); feed them to `advance`."""

    num_beams: int
    eos_ids: list[int]
    max_new_tokens: int
    vocab_size: int
    length_penalty: float = 1.0
    running: list[Beam] = field(default_factory=lambda: [Beam([], np.float32(0.0))])
    finished: list[tuple[np.float32, list[int]]] = field(default_factory=list)
    open: bool = True
    steps: int = 0

    @property
    def done(self) -> bool:
        return not self.open or self.steps >= self.max_new_tokens

    def advance(self, top_logprobs: list[dict[int, float]]) -> None:
        """One step: `top_logprobs[b]` maps token -> log p(token | running beam b) for at least
        the beam's best K tokens (more entries change nothing)."""
        if len(top_logprobs) != len(self.running):
            raise ValueError(f"expected log-probs for {len(self.running)} running beams, got "
                             f"{len(top_logprobs)}")
        keep = candidates_per_beam(self.num_beams, self.eos_ids)
        scored = [
            (np.float32(beam.score + np.float32(logprob)), b * self.vocab_size + token, b, token)
            for b, (beam, logprobs) in enumerate(zip(self.running, top_logprobs, strict=True))
            for token, logprob in logprobs.items()
        ]
        scored.sort(key=lambda c: (-c[0], c[1]))
        best = scored[:keep]
        length = self.steps + 1
        last = length >= self.max_new_tokens
        hits = [last or token in self.eos_ids for _, _, _, token in best]
        if self.open:
            ended = [
                (np.float32(score / np.float32(length ** self.length_penalty)),
                 self.running[b].tokens + [token])
                for (score, _, b, token), hit in zip(best[: self.num_beams], hits, strict=False)
                if hit
            ]
            merged = self.finished + ended  # stable: earlier hypotheses win ties
            merged.sort(key=lambda h: -h[0])
            self.finished = merged[: self.num_beams]
        self.running = [
            Beam(self.running[b].tokens + [token], score)
            for (score, _, b, token), hit in zip(best, hits, strict=True) if not hit
        ][: self.num_beams]
        self.steps = length
        self._close_if_no_better(length)

    def _close_if_no_better(self, length: int) -> None:
        if not self.open or len(self.finished) < self.num_beams or not self.running:
            return
        best_possible = self.running[0].score / np.float32(length ** self.length_penalty)
        worst_kept = min(score for score, _ in self.finished)
        self.open = bool(best_possible > worst_kept)

    def answer(self) -> list[int]:
        """The best hypothesis's tokens (with its EOS when it ended on one)."""
        if not self.done:
            raise RuntimeError("beam search is not finished")
        return list(self.finished[0][1])
