"""Reward-guided decoding (ARGS and PAD; README: Reward-guided decoding): cached and batched.

Per step, `z` = the decoding model's raw next-token logits at the last position (fp32) and the
candidates are the top-k ids of `z`. A guide scores the k candidates and a pure rule turns
(z_k, guide values) into scores over the k candidates; the token is their argmax (mode
"greedy") or a draw from softmax(score / sample_temp) (mode "topk").

- ARGS: the guide is a sequence-classification reward model (one label) reading
  [prompt, tokens so far, candidate i]; `score = z_k + w r_k`. Its KV cache holds k rows per
  question: each step it reads the k candidates as one new token per row (one forward for all
  B k rows, or chunks of whole questions under `rm_batch_size`), then every row of a question
  is replaced by the chosen candidate's row (`DynamicCache.batch_select_indices` with repeated
  indices), so the next step again starts from [prompt, tokens so far] in all k rows.
- PAD: the guide is a causal LM (the PersRM) reading the same ids as the decoding model, with
  its own KV cache advancing one token per step; `u` = its logits at the last position (through
  PAD's value head, `lm_head(W h + b)`, when rg_loading.load_persrm found one: value_head.py)
  and `score = z_k + w (log_softmax_k(u_k) - log_softmax_k(z_k))`. A PersRM with another
  tokenizer takes PAD's second rule instead (pad_cross_tokenizer.py, through `retokenizer`).
- implicit PAD: the PersRM is the decoding model itself reading the preference prompt while the
  decoder reads the base prompt; both prompts go through one stacked forward `[base; pref]`.
  With k = V this is Linear Alignment with ratio w - 1.

Rows whose question has ended (any EOS id, unless `ignore_eos`) leave the batch and every
cache. Prompts are left-padded with attention masks and position ids; a prefix shared by all
prompts of a model is encoded once per call and copied into every admission (engine.py's
`_SharedPrefix`).

Continuous batching (`stream_args`, `stream_pad`, `stream_pad_implicit`; greedy only): over
more questions than `batch_size`, the next ones are admitted as soon as rows finish. They are
prefilled in the decoding model and in the guide, and each of their caches is merged into the
running one with engine.py's `merge_caches` (masked left padding, each row its own positions);
columns no live row attends to are trimmed. A question's tokens do not depend on which
questions shared its batch. Sampled ("topk") decoding draws from one generator for the whole
batch, so its tokens do depend on the batch: it decodes all its questions in one batch.

Cost (evals/rg_bench.py; SmolLM2-135M fp32, 2 CPU threads on a quiet machine, 8 questions,
batch 8, 128 new tokens, greedy, k = 10): pref's `generate` 48 tokens/s, implicit PAD 44,
PAD with a second SmolLM2 as PersRM 27, ARGS with a SmolLM2-sized reward model 15; the
cache-free reference 1.3 tokens/s for PAD and implicit PAD, and 0.21 for ARGS (1 thread, where
the engine's ARGS made 10.6). ARGS pays for its k cache rows per question: each step copies
the reward model's B k row cache once to follow the chosen candidates.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from DecodingMethodsModels.engines.two_prompt import (
    DecodeResult,
    NonFiniteScoresError,
    _forward_kwargs,
    _mergeable,
    _SharedPrefix,
    interleave_rows,
    left_pad,
    merge_caches,
    model_input_device,
    trim_columns,
)
from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.models.value_head import warn_if_not_applied
from DecodingMethodsModels.rules.combine import NEG_FLOOR
from DecodingMethodsModels.rules.defaults import DEFAULT_SAMPLE_TEMP
from DecodingMethodsModels.rules.sampling import SamplingSettings, choose_tokens

MODES = ("greedy", "topk")

ScoreRule = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class GuidedSettings:
    """One reward-guided run: weight w, candidates k, selection mode and the stopping rule.

    `rm_batch_size` bounds the rows of one reward-model forward (ARGS): whole questions of k rows
    each, so a forward holds at most max(k, rm_batch_size) rows. None: all B k rows at once.
    """

    weight: float
    max_new_tokens: int
    eos_ids: tuple[int, ...]
    pad_id: int
    topk: int = 10
    mode: str = "greedy"
    sample_temp: float = DEFAULT_SAMPLE_TEMP
    ignore_eos: bool = False
    rm_batch_size: int | None = None
    share_prefix: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "eos_ids", tuple(self.eos_ids))
        if not math.isfinite(self.weight):
            raise UserError(f"the reward weight must be a finite number, got {self.weight}")
        if self.topk < 1:
            raise UserError(f"topk must be at least 1, got {self.topk}")
        if self.mode not in MODES:
            raise UserError(f"unknown selection mode {self.mode!r}; use one of {MODES}")
        if self.mode == "topk" and not (math.isfinite(self.sample_temp) and self.sample_temp > 0):
            raise UserError(f"sample_temp must be a positive number, got {self.sample_temp}")
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.rm_batch_size is not None and self.rm_batch_size < 1:
            raise UserError(f"rm_batch_size must be at least 1, got {self.rm_batch_size}")
        if not self.eos_ids and not self.ignore_eos:
            raise UserError("no EOS ids given: pass the model's EOS ids or set ignore_eos")

    @classmethod
    def from_run(cls, run, max_new_tokens: int, eos_ids, pad_id: int, **options):
        """Settings for one line of a run config (an rg_config.GuidedRunConfig)."""
        temp = DEFAULT_SAMPLE_TEMP if run.sample_temp is None else run.sample_temp
        return cls(weight=run.rm_weight, max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                   pad_id=pad_id, topk=run.topk, mode=run.mode, sample_temp=temp, **options)


# ----- pure rules on the k candidates ---------------------------------------------------------


def _check_candidates(candidate_logits: torch.Tensor, values: torch.Tensor) -> None:
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
    _check_candidates(candidate_logits, rewards)
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
    _check_candidates(candidate_logits, guide_logits)
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


# ----- one model's cached rows ----------------------------------------------------------------


def read_lm_logits(model, extra: dict, **inputs) -> torch.Tensor:
    """A causal LM's next-token logits at the last position, fp32 (R, V)."""
    return model(**inputs, **extra).logits[:, -1, :].float()


def read_reward(model, extra: dict, **inputs) -> torch.Tensor:
    """A sequence classifier's scalar at the last position, fp32 (R,).

    The backbone and the `score` head are called directly: transformers' own pooling looks
    for the last id that is not the pad id, which is wrong when the candidate is the pad id.
    """
    hidden = model.base_model(**inputs).last_hidden_state[:, -1, :]  # (R, H)
    return model.score(hidden)[:, 0].float()


def _extra_inputs(model, read) -> dict:
    return _forward_kwargs(model) if read is read_lm_logits else {}


def _prefix_of(model, read, prompts: list[list[int]],
               settings: GuidedSettings) -> Callable[[], _SharedPrefix]:
    """The prefix all of a stream's `prompts` share in one model, encoded on first use (inside
    the stream's inference mode) and copied into every admission."""
    return functools.cache(lambda: _SharedPrefix(
        model, prompts, settings.share_prefix, model_input_device(model),
        _extra_inputs(model, read)))


class _CachedRows:
    """One model's KV cache over R rows, with the attention mask of its columns (R, L) and each
    row's next position."""

    def __init__(self, model, read, prompts: list[list[int]], settings: GuidedSettings,
                 prefix: _SharedPrefix | None = None):
        self.model, self.read = model, read
        self.device = model_input_device(model)
        self.extra = _extra_inputs(model, read)
        if prefix is None:  # the prefix of these prompts alone
            prefix = _SharedPrefix(model, prompts, settings.share_prefix, self.device, self.extra)
        shared = prefix.length
        self.cache = prefix.cache_for(len(prompts))
        ids, suffix_mask = left_pad([row[shared:] for row in prompts], settings.pad_id)
        ids, suffix_mask = ids.to(self.device), suffix_mask.to(self.device)  # (R, L - P)
        self.mask = torch.ones((len(prompts), shared), dtype=torch.long, device=self.device)
        self.positions = shared + (suffix_mask.cumsum(-1) - 1).clamp(min=0)  # (R, L - P)
        self.prompt_ids, self.prompt_mask = ids, suffix_mask

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor,
                 new_mask: torch.Tensor | None = None) -> torch.Tensor:
        if new_mask is None:
            new_mask = torch.ones_like(ids)
        mask = torch.cat([self.mask, new_mask], dim=1)  # (R, L + new)
        out = self.read(
            self.model, self.extra, input_ids=ids, attention_mask=mask,
            position_ids=positions, past_key_values=self.cache, use_cache=True,
        )
        self.mask = mask
        return out

    def prefill(self) -> torch.Tensor:
        """Read the prompts; returns the model's output at their last position."""
        out = self._forward(self.prompt_ids, self.positions, self.prompt_mask)
        self.positions = self.positions[:, -1:] + 1  # (R, 1), the next position of each row
        self.prompt_ids = self.prompt_mask = None
        return out

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Read one token per row, (R,); returns the output at it."""
        out = self._forward(tokens.to(self.device).unsqueeze(-1), self.positions)
        self.positions = self.positions + 1
        return out

    def select(self, rows: torch.Tensor) -> None:
        """Keep `rows` (indices may repeat: a row copied into several) in this order."""
        rows = rows.to(self.device)
        self.cache.batch_select_indices(rows)
        self.mask, self.positions = self.mask[rows], self.positions[rows]

    def drop(self, rows: torch.Tensor) -> None:
        """`select`, then trim the columns no remaining row attends to."""
        self.select(rows)
        self.mask = trim_columns(self.cache, self.mask)

    def repeat(self, times: int) -> None:
        """Each row `times` times in a row: (R, ...) -> (R times, ...)."""
        self.cache.batch_repeat_interleave(times)
        self.mask = self.mask.repeat_interleave(times, dim=0)
        self.positions = self.positions.repeat_interleave(times, dim=0)

    def mergeable(self) -> bool:
        return _mergeable(self.cache)

    def merge(self, other: _CachedRows, parts: int = 1) -> None:
        """Take in `other`'s rows (prefilled), ordered as engine.interleave_rows does."""
        self.mask = merge_caches(self.cache, self.mask, other.cache, other.mask, parts)
        self.positions = interleave_rows(self.positions, other.positions, parts)


# ----- guides: what scores the candidates -----------------------------------------------------


class _RewardGuide:
    """ARGS's reward model: k cache rows per question, in groups of whole questions."""

    def __init__(self, reward_model, prompts: list[list[int]], settings: GuidedSettings,
                 prefix: _SharedPrefix | None = None):
        self.k = settings.topk
        per_group = len(prompts)
        self.per_group = None  # questions per group: unbounded
        if settings.rm_batch_size is not None:
            per_group = self.per_group = max(1, settings.rm_batch_size // self.k)
        self.groups: list[_CachedRows] = []
        self.sizes: list[int] = []  # questions per group, consecutive in the batch order
        for start in range(0, len(prompts), per_group):
            chunk = prompts[start:start + per_group]
            rows = _CachedRows(reward_model, read_reward, chunk, settings, prefix)
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

    def admit(self, other: _RewardGuide) -> None:
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


class _LanguageModelGuide:
    """PAD's PersRM: its own KV cache over the same ids, one token per step."""

    def __init__(self, persrm, prompts: list[list[int]], settings: GuidedSettings,
                 prefix: _SharedPrefix):
        self.rows = _CachedRows(persrm, read_lm_logits, prompts, settings, prefix)
        self.logits = self.rows.prefill()  # (b, V') u at the current step

    def values(self, candidates: torch.Tensor) -> torch.Tensor:
        u = self.logits.gather(1, candidates.to(self.logits.device))  # (b, k)
        return u.to(candidates.device)

    def admit(self, other: _LanguageModelGuide) -> None:
        self.rows.merge(other.rows)
        self.logits = torch.cat([self.logits, other.logits.to(self.logits.device)])

    def mergeable(self) -> bool:
        return self.rows.mergeable()

    def advance(self, keep: torch.Tensor | None, choice: torch.Tensor, tokens: torch.Tensor):
        if keep is not None:
            self.rows.drop(keep)
        self.logits = self.rows.step(tokens)


class _SeparateModels:
    """The decoding model in its own cache, and a guide beside it."""

    def __init__(self, model, prompts: list[list[int]], guide, settings: GuidedSettings,
                 prefix: _SharedPrefix):
        self.decoder = _CachedRows(model, read_lm_logits, prompts, settings, prefix)
        self.guide = guide

    def start(self) -> torch.Tensor:
        return self.decoder.prefill()

    def values(self, candidates: torch.Tensor) -> torch.Tensor:
        return self.guide.values(candidates)

    def mergeable(self) -> bool:
        return self.decoder.mergeable() and self.guide.mergeable()

    def admit(self, other: _SeparateModels) -> None:
        """Take in newcomers (started) after the running questions."""
        self.decoder.merge(other.decoder)
        self.guide.admit(other.guide)

    def advance(self, keep, choice, tokens) -> torch.Tensor:
        self.guide.advance(keep, choice, tokens)
        if keep is not None:
            self.decoder.drop(keep)
        return self.decoder.step(tokens)


class _StackedPrompts:
    """Implicit PAD: one model, rows `[base; pref]` in one cache; z from base, u from pref."""

    def __init__(self, model, base_ids, pref_ids, settings: GuidedSettings,
                 prefix: _SharedPrefix):
        self.rows = _CachedRows(model, read_lm_logits, base_ids + pref_ids, settings, prefix)
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

    def admit(self, other: _StackedPrompts) -> None:
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


# ----- the loop -------------------------------------------------------------------------------


Newcomers = Callable[[list[int]], object]  # question numbers -> their decoding object


@torch.inference_mode()
def _stream(newcomers: Newcomers, count: int, rule: ScoreRule, settings: GuidedSettings,
            generator: torch.Generator | None, batch_size: int):
    """Decode questions 0..count-1 with at most `batch_size` in flight, admitting the next ones
    as soon as rows finish; yields (question number, generated ids) as each finishes, the EOS
    that ended it included, and returns the number of steps taken."""
    waiting = deque(range(count))
    decoding, z = None, None  # the running questions and their z (b, V) fp32
    keys: list[int] = []  # the question number of each live row
    generated: list[list[int]] = []
    eos = None
    steps = 0
    while waiting or keys:
        if waiting and len(keys) < batch_size and (not keys or decoding.mergeable()):
            new = [waiting.popleft() for _ in range(min(batch_size - len(keys), len(waiting)))]
            joining = newcomers(new)
            z_new = joining.start()
            if keys:
                decoding.admit(joining)
                z = torch.cat([z, z_new.to(z.device)])
            else:
                decoding, z = joining, z_new
            keys += new
            generated += [[] for _ in new]
        if eos is None:
            eos = torch.tensor(sorted(set(settings.eos_ids)), dtype=torch.long, device=z.device)
        candidate_logits, candidates = torch.topk(z, settings.topk, dim=-1)  # (b, k)
        scores = rule(candidate_logits, decoding.values(candidates), settings.weight)  # (b, k)
        choice = choose_candidates(scores, settings.mode, settings.sample_temp, generator)
        tokens = candidates.gather(1, choice.unsqueeze(-1)).squeeze(-1)  # (b,)
        ended = torch.zeros_like(tokens, dtype=torch.bool)
        if not settings.ignore_eos:
            ended = torch.isin(tokens, eos)
        status = torch.stack([tokens, ended.long(), torch.isnan(scores).any(dim=-1).long()])
        chosen, ended, nan = status.cpu().tolist()  # one host sync
        steps += 1
        if any(nan):
            bad = [keys[i] for i, flag in enumerate(nan) if flag]
            raise NonFiniteScoresError(f"NaN scores for questions {bad} at step {steps - 1}",
                                       bad)
        kept = []
        for i, token in enumerate(chosen):
            generated[i].append(token)
            if ended[i] or len(generated[i]) == settings.max_new_tokens:
                yield keys[i], generated[i]
            else:
                kept.append(i)
        if not kept:
            decoding, keys, generated = None, [], []
            continue
        keep = None
        if len(kept) < len(keys):
            keys, generated = [keys[i] for i in kept], [generated[i] for i in kept]
            keep = torch.tensor(kept, device=tokens.device)
            choice, tokens = choice[keep], tokens[keep]
        z = decoding.advance(keep, choice, tokens)
    return steps


def _collect(stream: Iterator, count: int) -> DecodeResult:
    found = {}
    while True:
        try:
            key, ids = next(stream)
        except StopIteration as finished:
            return DecodeResult(token_ids=[found[i] for i in range(count)], steps=finished.value)
        found[key] = ids


# ----- checks and the public entry points -----------------------------------------------------


def vocabulary_size(model) -> int:
    """Width of a causal LM's logits: rows of its LM head."""
    head = model.get_output_embeddings()
    if head is None:
        raise UserError(f"{type(model).__name__} has no LM head: a causal LM is needed here")
    return head.weight.shape[0]


def _check_prompts(*prompt_lists: list[list[int]]) -> None:
    first = prompt_lists[0]
    if not first or any(len(p) != len(first) for p in prompt_lists):
        raise ValueError("need the same positive number of prompts for every model")
    if any(not row for p in prompt_lists for row in p):
        raise ValueError("every prompt needs at least one token")


def _check_topk(settings: GuidedSettings, vocab: int) -> None:
    if settings.topk > vocab:
        raise UserError(f"topk {settings.topk} is larger than the vocabulary ({vocab} tokens)")


def check_reward_model(reward_model, vocab: int) -> None:
    """A UserError unless `reward_model` has a one-label `score` head and reads at least `vocab`
    token ids."""
    head = getattr(reward_model, "score", None)
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
        raise UserError(
            f"{type(reward_model).__name__} is not a one-label sequence classifier with a "
            "`score` head (e.g. LlamaForSequenceClassification, num_labels=1): ARGS needs one"
        )
    rm_vocab = reward_model.get_input_embeddings().weight.shape[0]
    if rm_vocab < vocab:
        raise UserError(
            f"the reward model reads {rm_vocab} token ids but the decoding model writes {vocab}: "
            "they must share one tokenizer"
        )


def _check_generator(settings: GuidedSettings, generator: torch.Generator | None) -> None:
    if settings.mode == "topk" and generator is None:
        raise ValueError("mode 'topk' needs a seeded torch.Generator")


def _flight(settings: GuidedSettings, batch_size: int | None, count: int) -> int:
    """Questions in flight: all of them by default; fewer (continuous batching) only greedy."""
    if batch_size is None or batch_size >= count:
        return count
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if settings.mode == "topk":
        raise ValueError("continuous batching is greedy only: mode 'topk' draws for the whole "
                         "batch from one generator, so it decodes all its questions at once")
    return batch_size


def stream_args(model, reward_model, prompt_ids: list[list[int]], settings: GuidedSettings,
                batch_size: int | None = None, generator: torch.Generator | None = None,
                reward_prompt_ids: list[list[int]] | None = None) -> Iterator[tuple[int, list]]:
    """ARGS over every prompt, at most `batch_size` questions in flight (all by default):
    yields (prompt number, generated ids, the ending EOS included) as each finishes.

    `score = z_k + w r_k` over the top-k candidates. The reward model reads
    `reward_prompt_ids` (default: the same prompts) followed by the tokens so far and each
    candidate. Both models must share one tokenizer (`check_same_tokenizer`).
    """
    reward_prompt_ids = reward_prompt_ids or prompt_ids
    _check_prompts(prompt_ids, reward_prompt_ids)
    vocab = vocabulary_size(model)
    _check_topk(settings, vocab)
    check_reward_model(reward_model, vocab)
    _check_generator(settings, generator)
    flight = _flight(settings, batch_size, len(prompt_ids))
    decoder_prefix = _prefix_of(model, read_lm_logits, prompt_ids, settings)
    reward_prefix = _prefix_of(reward_model, read_reward, reward_prompt_ids, settings)

    def newcomers(keys: list[int]) -> _SeparateModels:
        guide = _RewardGuide(reward_model, [reward_prompt_ids[i] for i in keys], settings,
                             reward_prefix())
        return _SeparateModels(model, [prompt_ids[i] for i in keys], guide, settings,
                               decoder_prefix())
    return _stream(newcomers, len(prompt_ids), args_scores, settings, generator, flight)


def stream_pad(model, persrm, prompt_ids: list[list[int]], settings: GuidedSettings,
               batch_size: int | None = None, generator: torch.Generator | None = None,
               retokenizer=None) -> Iterator[tuple[int, list]]:
    """PAD over every prompt, at most `batch_size` in flight; the PersRM (a causal LM) reads
    the same ids as `model`. `score = z_k + w (log_softmax_k(u_k) - log_softmax_k(z_k))` over
    the top-k candidates of z. Yields (prompt number, generated ids) as each finishes.
    u is whatever `persrm` computes: load it with rg_loading.load_persrm (or apply
    value_head.attach_value_head) for PAD's value head; a warning says when one is left out.

    With a `retokenizer` (pad_cross_tokenizer.Retokenizer: a PersRM with another tokenizer),
    PAD's second rule instead: the PersRM reads the text so far in its own ids and
    `score = z_k + w (u_mapped(k) - z_k)` on raw logits.
    """
    if retokenizer is not None:
        from DecodingMethodsModels.engines.retokenized_pad import stream_pad_retokenized

        return stream_pad_retokenized(model, persrm, retokenizer, prompt_ids, settings,
                                      batch_size, generator)
    _check_prompts(prompt_ids)
    vocab = vocabulary_size(model)
    _check_topk(settings, vocab)
    warn_if_not_applied(persrm)
    persrm_vocab = vocabulary_size(persrm)
    if persrm_vocab < vocab:
        raise UserError(
            f"the PersRM scores {persrm_vocab} token ids but the decoding model writes {vocab}: "
            "they must share one tokenizer"
        )
    _check_generator(settings, generator)
    flight = _flight(settings, batch_size, len(prompt_ids))
    decoder_prefix = _prefix_of(model, read_lm_logits, prompt_ids, settings)
    guide_prefix = _prefix_of(persrm, read_lm_logits, prompt_ids, settings)

    def newcomers(keys: list[int]) -> _SeparateModels:
        prompts = [prompt_ids[i] for i in keys]
        guide = _LanguageModelGuide(persrm, prompts, settings, guide_prefix())
        return _SeparateModels(model, prompts, guide, settings, decoder_prefix())
    return _stream(newcomers, len(prompt_ids), pad_scores, settings, generator, flight)


def stream_pad_implicit(model, base_ids: list[list[int]], pref_ids: list[list[int]],
                        settings: GuidedSettings, batch_size: int | None = None,
                        generator: torch.Generator | None = None) -> Iterator[tuple[int, list]]:
    """Implicit PAD, at most `batch_size` questions in flight: the decoding model reads
    `base_ids`; the same model reading `pref_ids` is the PersRM. Over the candidates, score =
    (1 - w) log p_base + w log p_pref + const; with k = V this is Linear Alignment with ratio
    w - 1. One stacked forward per step. Yields (question number, generated ids).
    """
    _check_prompts(base_ids, pref_ids)
    _check_topk(settings, vocabulary_size(model))
    _check_generator(settings, generator)
    flight = _flight(settings, batch_size, len(base_ids))
    prefix = _prefix_of(model, read_lm_logits, base_ids + pref_ids, settings)

    def newcomers(keys: list[int]) -> _StackedPrompts:
        return _StackedPrompts(model, [base_ids[i] for i in keys], [pref_ids[i] for i in keys],
                               settings, prefix())
    return _stream(newcomers, len(base_ids), pad_scores, settings, generator, flight)


def decode_args(model, reward_model, prompt_ids: list[list[int]], settings: GuidedSettings,
                generator: torch.Generator | None = None,
                reward_prompt_ids: list[list[int]] | None = None,
                batch_size: int | None = None) -> DecodeResult:
    """`stream_args` collected in prompt order (by default all prompts in one batch)."""
    return _collect(stream_args(model, reward_model, prompt_ids, settings, batch_size,
                                generator, reward_prompt_ids), len(prompt_ids))


def decode_pad(model, persrm, prompt_ids: list[list[int]], settings: GuidedSettings,
               generator: torch.Generator | None = None, batch_size: int | None = None,
               retokenizer=None) -> DecodeResult:
    """`stream_pad` collected in prompt order (by default all prompts in one batch)."""
    return _collect(stream_pad(model, persrm, prompt_ids, settings, batch_size, generator,
                               retokenizer), len(prompt_ids))


def decode_pad_implicit(model, base_ids: list[list[int]], pref_ids: list[list[int]],
                        settings: GuidedSettings, generator: torch.Generator | None = None,
                        batch_size: int | None = None) -> DecodeResult:
    """`stream_pad_implicit` collected in question order (by default all in one batch)."""
    return _collect(stream_pad_implicit(model, base_ids, pref_ids, settings, batch_size,
                                        generator), len(base_ids))


def check_same_tokenizer(tokenizer, other, role: str = "reward model") -> None:
    """Raise a UserError unless `other` maps every token to the same id as `tokenizer`."""
    ours, theirs = tokenizer.get_vocab(), other.get_vocab()
    if ours == theirs:
        return
    differing = sorted(t for t in ours.keys() | theirs.keys() if ours.get(t) != theirs.get(t))
    raise UserError(
        f"the {role}'s tokenizer differs from the decoding model's ({len(ours)} vs {len(theirs)} "
        f"tokens, {len(differing)} with other ids, e.g. {differing[0]!r}): they must share one"
    )
