"""The reward-guided engine's parts on the engine core (engines/core.py): what scores the k
candidates of each question (a guide), the decoding model beside it, and `GuidedBatch`, the core
`Batch` that picks each question's token with a pure rule (rules/guided.py).

A decoding object (`SeparateModels`, `StackedPrompts`) prefills newcomers (`start`), gives the
guide's values of the candidates (`values`), takes in newcomers (`admit`), and reads the chosen
tokens after keeping the live questions (`advance`). A guide (`RewardGuide`,
`LanguageModelGuide`, retokenized_pad's `RetokenizedGuide`) has the same `values`, `admit`,
`mergeable` and `advance`. A new guide plugs in here without touching the loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator

import torch

from DecodingMethodsModels.engines.core import (
    CachedRows,
    SharedPrefix,
    forward_kwargs,
    model_input_device,
    read_logits,
    record_tokens,
    settle_tokens,
    stream_batches,
)
from DecodingMethodsModels.engines.guided_settings import GuidedSettings
from DecodingMethodsModels.rules.guided import ScoreRule, choose_candidates


def read_reward(model, extra: dict, **inputs) -> torch.Tensor:
    """A sequence classifier's scalar at the last position, fp32 (R,).

    The backbone and the `score` head are called directly: transformers' own pooling looks
    for the last id that is not the pad id, which is wrong when the candidate is the pad id.
    """
    hidden = model.base_model(**inputs).last_hidden_state[:, -1, :]  # (R, H)
    return model.score(hidden)[:, 0].float()


def prefix_of(model, read, prompts: list[list[int]],
              settings: GuidedSettings) -> Callable[[], SharedPrefix]:
    """The prefix all of a stream's `prompts` share in one model, encoded on first use (inside
    the stream's inference mode) and copied into every admission."""
    return functools.cache(lambda: SharedPrefix(
        model, prompts, settings.share_prefix, model_input_device(model),
        forward_kwargs(model) if read is read_logits else {}))


# ----- guides: what scores the candidates -----------------------------------------------------


class RewardGuide:
    """ARGS's reward model: k cache rows per question, in groups of whole questions."""

    def __init__(self, reward_model, prompts: list[list[int]], settings: GuidedSettings,
                 prefix: SharedPrefix | None = None):
        self.k = settings.topk
        per_group = len(prompts)
        self.per_group = None  # questions per group: unbounded
        if settings.rm_batch_size is not None:
            per_group = self.per_group = max(1, settings.rm_batch_size // self.k)
        self.groups: list[CachedRows] = []
        self.sizes: list[int] = []  # questions per group, consecutive in the batch order
        for start in range(0, len(prompts), per_group):
            chunk = prompts[start:start + per_group]
            rows = CachedRows(reward_model, read_reward, chunk, settings.pad_id, prefix,
                              settings.share_prefix)
            rows.prefill()  # the reward of the bare prompt is not needed, only its cache
            rows.repeat(self.k)
            self.groups.append(rows)
            self.sizes.append(len(chunk))

    def values(self, candidates: torch.Tensor) -> torch.Tensor:
        """Rewards of [prompt, tokens so far, candidate], (b, k) ids -> (b, k)."""
        rewards, start = [], 0
        for rows, size in zip(self.groups, self.sizes, strict=True):
            flat = candidates[start:start + size].reshape(-1)  # (size k,)
            rewards.append(rows.step(flat).view(size, self.k).to(candidates.device))
            start += size
        return torch.cat(rewards)

    def admit(self, other: RewardGuide) -> None:
        """Newcomers' groups after the running ones; their first joins the last running group
        when both fit in one forward."""
        first = 0
        if self.groups and self.groups[-1].mergeable() and (
                self.per_group is None or self.sizes[-1] + other.sizes[0] <= self.per_group):
            self.groups[-1].merge(other.groups[0])
            self.sizes[-1] += other.sizes[0]
            first = 1
        self.groups += other.groups[first:]
        self.sizes += other.sizes[first:]

    def mergeable(self) -> bool:
        return True  # newcomers that cannot be merged form groups of their own

    def advance(self, keep: torch.Tensor | None, choice: torch.Tensor, tokens: torch.Tensor):
        """Every row of a kept question becomes its chosen candidate's row; the chosen token is
        already in that row's cache, so nothing is read."""
        kept = torch.arange(sum(self.sizes)) if keep is None else keep.cpu()
        choice = choice.cpu()
        groups, sizes, start = [], [], 0
        for rows, size in zip(self.groups, self.sizes, strict=True):
            mine = (kept >= start) & (kept < start + size)
            local = kept[mine] - start
            if local.numel():
                chosen_rows = (local * self.k + choice[mine]).repeat_interleave(self.k)
                if keep is None:
                    rows.select(chosen_rows)
                else:  # questions left: their columns may be trimmed
                    rows.drop(chosen_rows)
                groups.append(rows)
                sizes.append(local.numel())
            start += size
        self.groups, self.sizes = groups, sizes


class LanguageModelGuide:
    """PAD's PersRM: its own KV cache over the same ids, one token per step."""

    def __init__(self, persrm, prompts: list[list[int]], settings: GuidedSettings,
                 prefix: SharedPrefix):
        self.rows = CachedRows(persrm, read_logits, prompts, settings.pad_id, prefix,
                               settings.share_prefix)
        self.logits = self.rows.prefill()  # (b, V') u at the current step

    def values(self, candidates: torch.Tensor) -> torch.Tensor:
        u = self.logits.gather(1, candidates.to(self.logits.device))  # (b, k)
        return u.to(candidates.device)

    def admit(self, other: LanguageModelGuide) -> None:
        self.rows.merge(other.rows)
        self.logits = torch.cat([self.logits, other.logits.to(self.logits.device)])

    def mergeable(self) -> bool:
        return self.rows.mergeable()

    def advance(self, keep: torch.Tensor | None, choice: torch.Tensor, tokens: torch.Tensor):
        if keep is not None:
            self.rows.drop(keep)
        self.logits = self.rows.step(tokens)


class SeparateModels:
    """The decoding model in its own cache, and a guide beside it."""

    def __init__(self, model, prompts: list[list[int]], guide, settings: GuidedSettings,
                 prefix: SharedPrefix):
        self.decoder = CachedRows(model, read_logits, prompts, settings.pad_id, prefix,
                                  settings.share_prefix)
        self.guide = guide

    def start(self) -> torch.Tensor:
        return self.decoder.prefill()

    def values(self, candidates: torch.Tensor) -> torch.Tensor:
        return self.guide.values(candidates)

    def mergeable(self) -> bool:
        return self.decoder.mergeable() and self.guide.mergeable()

    def admit(self, other: SeparateModels) -> None:
        """Take in newcomers (started) after the running questions."""
        self.decoder.merge(other.decoder)
        self.guide.admit(other.guide)

    def advance(self, keep, choice, tokens) -> torch.Tensor:
        self.guide.advance(keep, choice, tokens)
        if keep is not None:
            self.decoder.drop(keep)
        return self.decoder.step(tokens)


class StackedPrompts:
    """Implicit PAD: one model, rows `[base; pref]` in one cache; z from base, u from pref."""

    def __init__(self, model, base_ids, pref_ids, settings: GuidedSettings,
                 prefix: SharedPrefix):
        self.rows = CachedRows(model, read_logits, base_ids + pref_ids, settings.pad_id,
                               prefix, settings.share_prefix)
        self.live = len(base_ids)

    def _split(self, logits: torch.Tensor) -> torch.Tensor:
        self.guide_logits = logits[self.live:]  # (b, V) u
        return logits[: self.live]  # (b, V) z

    def start(self) -> torch.Tensor:
        return self._split(self.rows.prefill())

    def values(self, candidates: torch.Tensor) -> torch.Tensor:
        return self.guide_logits.gather(1, candidates)

    def mergeable(self) -> bool:
        return self.rows.mergeable()

    def admit(self, other: StackedPrompts) -> None:
        """[base running; base new; pref running; pref new]."""
        self.rows.merge(other.rows, parts=2)
        self.guide_logits = torch.cat([self.guide_logits, other.guide_logits])
        self.live += other.live

    def advance(self, keep, choice, tokens) -> torch.Tensor:
        if keep is not None:
            keep = keep.to(self.rows.device)
            self.rows.drop(torch.cat([keep, keep + self.live]))  # same question, both halves
            self.live = keep.shape[0]
        return self._split(self.rows.step(torch.cat([tokens, tokens])))


# ----- the batch the core loop drives ---------------------------------------------------------


class GuidedBatch:
    """Live questions of a reward-guided stream (a core `Batch`) over a decoding object; `z`
    (b, V) fp32 are the decoding model's raw next-token logits. The tokens chosen are read
    (`decoding.advance`) at the next `step`, or before newcomers merge: the running rows read
    their last tokens alone, and newcomers choose their first token with them at the next
    step (`choose_on_admission=False`)."""

    def __init__(self, decoding, keys: list[int], rule: ScoreRule, settings: GuidedSettings,
                 generator: torch.Generator | None):
        self.decoding, self.rule, self.settings = decoding, rule, settings
        self.generator = generator
        self.z = decoding.start()  # (b, V)
        self.eos = torch.tensor(sorted(set(settings.eos_ids)), dtype=torch.long,
                                device=self.z.device)
        self.keys = list(keys)
        self.generated: list[list[int]] = [[] for _ in keys]
        self.ended = [False] * len(keys)
        self.pending = None  # (kept rows or None, choice (b,), tokens (b,)) not yet read

    def choose(self) -> list[bool]:
        settings = self.settings
        candidate_logits, candidates = torch.topk(self.z, settings.topk, dim=-1)  # (b, k)
        values = self.decoding.values(candidates)  # (b, k)
        scores = self.rule(candidate_logits, values, settings.weight)  # (b, k)
        choice = choose_candidates(scores, settings.mode, settings.sample_temp, self.generator)
        tokens = candidates.gather(1, choice.unsqueeze(-1)).squeeze(-1)  # (b,)
        at_eos = torch.zeros_like(tokens, dtype=torch.bool)
        if not settings.ignore_eos:
            at_eos = torch.isin(tokens, self.eos)
        step = len(self.generated[0])
        chosen, ended = settle_tokens(tokens, at_eos, torch.isnan(scores).any(dim=-1), self.keys,
                                      lambda bad: f"NaN scores for questions {bad} at step {step}")
        self.pending = (None, choice, tokens)
        return record_tokens(self.generated, chosen, ended, settings.max_new_tokens)

    def keep(self, rows: list[int]) -> None:
        _, choice, tokens = self.pending
        index = torch.tensor(rows, dtype=torch.long, device=tokens.device)
        self.pending = (index, choice[index], tokens[index])
        self.keys = [self.keys[i] for i in rows]
        self.generated = [self.generated[i] for i in rows]
        self.ended = [self.ended[i] for i in rows]

    def step(self) -> None:
        if self.pending is not None:
            self.z = self.decoding.advance(*self.pending)
            self.pending = None

    def mergeable(self) -> bool:
        return self.decoding.mergeable()

    def merge(self, newcomers: GuidedBatch) -> None:
        self.step()
        newcomers.step()
        self.decoding.admit(newcomers.decoding)
        self.z = torch.cat([self.z, newcomers.z.to(self.z.device)])
        self.keys += newcomers.keys
        self.generated += newcomers.generated
        self.ended += newcomers.ended


def stream_guided(newcomers: Callable[[list[int]], object], count: int, rule: ScoreRule,
                  settings: GuidedSettings, generator: torch.Generator | None,
                  batch_size: int) -> Generator[tuple[int, list], None, int]:
    """Decode questions 0..count-1 under `rule`, `newcomers(keys)` making their decoding
    object, at most `batch_size` in flight (engines/core.py's `stream_batches`)."""
    def start(keys: list[int]) -> GuidedBatch:
        return GuidedBatch(newcomers(keys), keys, rule, settings, generator)
    return stream_batches(start, count, batch_size, choose_on_admission=False)
