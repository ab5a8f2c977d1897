"""LA and Amulet as logits processors: `model.generate(pref_ids, logits_processor=[p])`.

`generate` runs the preference prompt as usual; the processor runs the second (base) prompt
through the same model with a KV cache of its own, one new token per step after a prefill, and
returns `combine(log p_pref, log p_base)` from the project's pure rules (combine.py), both
log-softmaxed in fp32 here. Whatever `generate` does with those scores afterwards is its own:
temperature, top-k and top-p warpers (which it applies after user processors), sampling, beam
search, stopping criteria, streamers.

Beam search: `generate` hands a processor `input_ids` of batch * num_beams rows and reorders the
beams between steps without telling it. Each call finds, for every row, the row of the previous
call whose tokens it extends (`beam_sources`) and reorders the base cache to match; rows of one
question share a base prompt, so only the cache moves.

This costs one extra forward of one token per row per step, like transformers' own
`guidance_scale` CFG; the stacked engine (engine.decode_two_prompts, also reachable through
`model.generate(custom_generate=...)`, see api.py) does both prompts in one forward.

The reward-guided methods (ARGS and PAD, reward_guided.py) follow the same pattern: their
guide model keeps a cache of its own that follows `generate`'s rows (`ArgsProcessor`,
`PadProcessor`), and the scores come from the engine's pure rules over the top-k candidates.
"""

from __future__ import annotations

import math

import torch
from transformers import DynamicCache, LogitsProcessor

from DecodingMethodsModels.engines.reward_guided import (
    args_scores,
    check_reward_model,
    pad_scores,
    read_lm_logits,
    read_reward,
    vocabulary_size,
)
from DecodingMethodsModels.engines.two_prompt import (
    NonFiniteScoresError,
    _forward_kwargs,
    model_input_device,
    select_cache_rows,
)
from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.models.value_head import warn_if_not_applied
from DecodingMethodsModels.pipeline.methods import DecodeSettings
from DecodingMethodsModels.rules.combine import CombineRule, amulet_rule, la_rule
from DecodingMethodsModels.rules.sampling import unusable_rows

# The paper's settings, as the CLI's defaults, for every entry point of the API.
PAPER = DecodeSettings(max_new_tokens=1, eos_ids=[], pad_id=0)


def beam_sources(previous: torch.Tensor, current: torch.Tensor, beams: int) -> torch.Tensor | None:
    """For each row of `current`, the row of `previous` whose tokens it extends by one.

    `previous` (R, n) and `current` (R, n + 1) hold the generated tokens of R = Q * beams rows,
    rows q * beams ... (q + 1) * beams - 1 belonging to question q; a row is searched for among
    its own question's rows only, and the first match is taken (rows with equal tokens have
    equal caches). Returns a (R,) long index into `previous`, or None if some row extends none.
    """
    rows, length = previous.shape
    if current.shape != (rows, length + 1) or rows % beams:
        return None
    questions = rows // beams
    before = previous.view(questions, 1, beams, length)
    now = current[:, :length].reshape(questions, beams, 1, length)
    extends = (now == before).all(dim=-1)  # (Q, beams now, beams before)
    if not bool(extends.any(dim=-1).all()):
        return None
    first = extends.int().argmax(dim=-1)  # (Q, beams): the first matching earlier beam
    offsets = torch.arange(questions, device=first.device).unsqueeze(-1) * beams
    return (first + offsets).flatten()


def whole_groups(rows: torch.Tensor, copies: int) -> bool:
    """Whether `rows` (R, L) are R / copies groups of `copies` equal rows in a row: the beams
    (or returned sequences) of each question, which share one extra prompt."""
    if copies == 1:
        return True
    groups = rows.view(rows.shape[0] // copies, copies, -1)
    return bool((groups == groups[:, :1]).all())


def _as_batch(ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt ids (Q, L) and mask (Q, L) from a tensor (mask defaults to ones) or id lists."""
    if not torch.is_tensor(ids):
        from DecodingMethodsModels.engines.two_prompt import left_pad

        if attention_mask is not None:
            raise ValueError("pass an attention mask only with a tensor of prompt ids")
        return left_pad([list(row) for row in ids], 0)
    ids = ids if ids.dim() == 2 else ids.unsqueeze(0)
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask
    mask = mask if mask.dim() == 2 else mask.unsqueeze(0)
    if mask.shape != ids.shape:
        raise ValueError(
            f"attention mask {tuple(mask.shape)} does not match ids {tuple(ids.shape)}")
    return ids.long(), mask.long()


class _FollowingCache(LogitsProcessor):
    """A second model's KV cache over the rows of one `generate` call, following its beams.

    `extra_ids` (Q, L) with `extra_attention_mask` (left padding), or a list of Q id lists, is
    what the second model reads before the generated tokens, for each of the Q questions of the
    `generate` call in the same order. `read(model, extra_kwargs, **inputs)` is the model's
    output at the last position (reward_guided's `read_lm_logits` or `read_reward`).
    One processor serves one `generate` call at a time; a new call (another prompt or length)
    starts afresh, so it can be reused.
    """

    def __init__(self, model, extra_ids, extra_attention_mask, read):
        self.model = model
        self._read = read
        self.extra_ids, self.extra_mask = _as_batch(extra_ids, extra_attention_mask)
        self._forward_extra = _forward_kwargs(model) if read is read_lm_logits else {}
        self._reset()

    def _reset(self) -> None:
        self.cache = None
        self.prompt: torch.Tensor | None = None  # (R, P) generate's prompt rows
        self.generated: torch.Tensor | None = None  # (R, n) tokens generated so far
        self.mask: torch.Tensor | None = None  # (R, L + n) the extra rows' attention mask
        self.next_position: torch.Tensor | None = None  # (R,)
        self.beams = 1

    def _continues(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """The beam sources of this call if it continues the previous one; None if it starts a
        new generation (another batch, prompt or length)."""
        if self.prompt is None or input_ids.shape[0] != self.prompt.shape[0]:
            return None
        width = self.prompt.shape[1]
        if input_ids.shape[1] != width + self.generated.shape[1] + 1:
            return None
        if not torch.equal(input_ids[:, :width], self.prompt):
            return None
        sources = beam_sources(self.generated, input_ids[:, width:], self.beams)
        if sources is None:  # one token further on the same prompts, yet no row continues
            raise ValueError(
                "generate's rows no longer extend the previous step's; this processor follows "
                "greedy, sampling and beam search, not rows rewritten in place")
        return sources

    def _extra_output(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """The second model's output after reading its prompt and every token of `input_ids`
        after generate's prompt (the last one only, once its cache holds the others)."""
        sources = self._continues(input_ids)
        if sources is None:
            return self._prefill(input_ids)
        self.generated = input_ids[:, self.prompt.shape[1]:].clone()
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        out = self._advance(sources, input_ids[:, -1:].to(self.mask.device))
        self.next_position = self.next_position + 1
        return out

    def _advance(self, sources: torch.Tensor | None, last: torch.Tensor) -> torch.Tensor | None:
        """Move the cache rows to `sources` (None: they stay) and read the last tokens (R, 1)."""
        if sources is not None and not torch.equal(
                sources, torch.arange(len(sources), device=sources.device)):
            select_cache_rows(self.cache, sources)
        return self._read(
            self.model, self._forward_extra, input_ids=last, attention_mask=self.mask,
            position_ids=self.next_position.unsqueeze(-1), past_key_values=self.cache,
            use_cache=True,
        )

    def _prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """A new generation: encode the extra prompts, one copy per row of `input_ids`."""
        self._reset()
        questions = self.extra_ids.shape[0]
        if input_ids.shape[0] % questions:
            raise ValueError(
                f"generate has {input_ids.shape[0]} rows for {questions} extra prompts: pass one "
                "extra prompt per prompt of the generate call"
            )
        self.beams = input_ids.shape[0] // questions  # num_beams or num_return_sequences
        if not whole_groups(input_ids, self.beams):
            raise ValueError(
                f"generate has {input_ids.shape[0]} rows for {questions} extra prompts, and its "
                f"rows are not {self.beams} copies (beams) of each question: pass one extra "
                "prompt per prompt of the generate call")
        device = model_input_device(self.model)
        ids = self.extra_ids.repeat_interleave(self.beams, dim=0).to(device)  # (R, L)
        mask = self.extra_mask.repeat_interleave(self.beams, dim=0).to(device)  # (R, L)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens from 0
        self.cache = DynamicCache()
        out = self._read(self.model, self._forward_extra, input_ids=ids, attention_mask=mask,
                         position_ids=positions, past_key_values=self.cache, use_cache=True)
        self.mask = mask
        self.next_position = mask.sum(-1)  # (R,)
        self.prompt = input_ids.clone()
        self.generated = input_ids[:, input_ids.shape[1]:].clone()  # (R, 0)
        return out


class TwoPromptProcessor(_FollowingCache):
    """Scores of `generate`'s prompt combined with those of a second prompt, rule given.

    `extra_ids` (Q, L) with `extra_attention_mask` (left padding), or a list of Q id lists, is
    the second prompt of each of the Q questions of the `generate` call, in the same order.
    `rule(own_logprobs, extra_logprobs) -> scores` takes fp32 (rows, V) log-probs: for LA and
    Amulet `generate` reads the preference prompt and the extra prompt is the base prompt.
    """

    def __init__(self, model, extra_ids, rule: CombineRule, extra_attention_mask=None):
        super().__init__(model, extra_ids, extra_attention_mask, read_lm_logits)
        self.rule = rule

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        # Greedy and sampling hand over raw logits, beam search log-softmaxed ones:
        # log_softmax is idempotent, so both become the same fp32 log-probs.
        own = torch.log_softmax(scores.float(), dim=-1)  # (R, V)
        with torch.no_grad():
            extra = torch.log_softmax(self._extra_output(input_ids), dim=-1)
        return _checked(self.rule(own, extra.to(own.device)))


def _checked(scores: torch.Tensor) -> torch.Tensor:
    bad = unusable_rows(scores)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise NonFiniteScoresError(f"NaN or no finite score for batch rows {rows}")
    return scores


class LinearAlignmentProcessor(TwoPromptProcessor):
    """Linear Alignment inside `generate`: `log p_pref + ratio (log p_pref - log p_base)`.

    `generate` reads the preference prompts; `base_ids` (with `base_attention_mask`) are the
    base prompts of the same questions. The scores are not renormalised (as transformers' CFG).
    """

    def __init__(self, model, base_ids, base_attention_mask=None,
                 ratio: float = PAPER.reinforce_ratio):
        super().__init__(model, base_ids, la_rule(ratio), base_attention_mask)


class AmuletProcessor(TwoPromptProcessor):
    """Amulet inside `generate`: T FTRL iterations per token (combine.amulet_rule).

    `generate` reads the preference prompts; `base_ids` (with `base_attention_mask`) are the
    base prompts of the same questions. `solver` "closed_form" or "iterative" (same tokens).
    """

    def __init__(self, model, base_ids, base_attention_mask=None,
                 iterations: int = PAPER.iteration_num, alpha: float = PAPER.alpha,
                 player_lambda: float = PAPER.player_lambda, eta: float = PAPER.eta,
                 solver: str = PAPER.amulet_solver):
        rule = amulet_rule(iterations, alpha, player_lambda, eta, solver)
        super().__init__(model, base_ids, rule, base_attention_mask)


# ----- reward-guided decoding: ARGS and PAD (reward_guided.py's rules) ------------------------

ARGS_WEIGHT, PAD_WEIGHT, TOPK = 1.5, 0.8, 10  # ARGS's paper setting; PAD's usual P-Soups w


def _check_guidance(weight: float, topk: int) -> None:
    if not math.isfinite(weight):
        raise UserError(f"the reward weight must be a finite number, got {weight}")
    if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
        raise UserError(f"topk must be a whole number of at least 1, got {topk!r}")


def _over_candidates(scores: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k (values, ids) of generate's fp32 scores (R, V), with k checked against V."""
    if topk > scores.shape[-1]:
        raise UserError(f"topk {topk} is larger than the vocabulary ({scores.shape[-1]} tokens)")
    return torch.topk(scores, topk, dim=-1)  # (R, k) each


def _candidates_only(like: torch.Tensor, candidates: torch.Tensor,
                     candidate_scores: torch.Tensor) -> torch.Tensor:
    """(R, V) scores: the candidates' scores at their ids, -inf everywhere else."""
    out = torch.full_like(like, float("-inf"))
    return _checked(out.scatter_(1, candidates, candidate_scores.to(out.dtype)))


class PadProcessor(_FollowingCache):
    """PAD inside `generate`: `score_k = z_k + w (log_softmax_k(u_k) - log_softmax_k(z_k))`.

    z = `generate`'s scores of the decoding model, candidates = their top-k ids, u = the
    PersRM's LM-head logits after it read `persrm_ids` (Q, L, left padding with
    `persrm_attention_mask`, or a list of Q id lists) and the tokens generated so far; both
    log-softmaxes run over the k candidates only (reward_guided.pad_scores). Every other token
    gets -inf. Up to a per-row constant, score_k = (1 - w) z_k + w u_k.

    - PAD: `persrm` is the PersRM (a causal LM of the same tokenizer) and `persrm_ids` are the
      ids `generate` reads, so both read the same sequence.
    - implicit PAD: `persrm` is the decoding model itself, `persrm_ids` the preference prompts,
      and `generate` reads the base prompts; over the whole vocabulary (k = V) this is Linear
      Alignment with ratio w - 1.

    PAD's value head: load the PersRM with `attach_value_head` applied (value_head.py), or a
    warning says that its checkpoint's head is left out.

    The PersRM keeps a KV cache of its own (one token per row per step) that follows beam
    search's reordering. Greedy `generate` gives reward_guided.decode_pad's tokens (mode
    "greedy"); with `do_sample=True, temperature=0.7` it draws as mode "topk" does.
    """

    def __init__(self, persrm, persrm_ids, persrm_attention_mask=None,
                 weight: float = PAD_WEIGHT, topk: int = TOPK):
        _check_guidance(weight, topk)
        self.persrm_vocab = vocabulary_size(persrm)  # a UserError without an LM head
        warn_if_not_applied(persrm)
        super().__init__(persrm, persrm_ids, persrm_attention_mask, read_lm_logits)
        self.weight, self.topk = weight, topk

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        z = scores.float()
        if self.persrm_vocab < z.shape[-1]:
            raise UserError(
                f"the PersRM scores {self.persrm_vocab} token ids but the decoding model writes "
                f"{z.shape[-1]}: they must share one tokenizer")
        candidate_logits, candidates = _over_candidates(z, self.topk)
        with torch.no_grad():
            u = self._extra_output(input_ids)  # (R, V') fp32
        guide = u.gather(1, candidates.to(u.device)).to(z.device)  # (R, k)
        return _candidates_only(z, candidates, pad_scores(candidate_logits, guide, self.weight))


class ArgsProcessor(_FollowingCache):
    """ARGS inside `generate`: `score_k = z_k + w r_k` over the top-k candidates of z.

    z = `generate`'s scores of the decoding model; r_k = the reward model's scalar (a
    one-label sequence classifier of the same tokenizer) on [`reward_ids` of the question,
    tokens generated so far, candidate k], read at the candidate (reward_guided.args_scores).
    `reward_ids` (Q, L, left padding with `reward_attention_mask`, or a list of Q id lists)
    are usually the ids `generate` reads. Every other token gets -inf.

    The reward model keeps a KV cache of k rows per `generate` row, [prompt, tokens so far,
    candidate j], as the engine does: each step the row of the candidate `generate` took
    (following beam search's reordering) is copied k times and the new k candidates are read
    in one forward. A step where some row took no candidate of its source row (a finished
    row's padding, a -inf token taken by beam search) re-reads the last token of every row
    instead, on [prompt, tokens so far]. Greedy `generate` gives reward_guided.decode_args's
    tokens (mode "greedy"); with `do_sample=True, temperature=0.7` it draws as mode "topk" does.
    """

    def __init__(self, reward_model, reward_ids, reward_attention_mask=None,
                 weight: float = ARGS_WEIGHT, topk: int = TOPK):
        _check_guidance(weight, topk)
        check_reward_model(reward_model, 0)  # a one-label classifier; its vocabulary: later
        self.reward_vocab = reward_model.get_input_embeddings().weight.shape[0]
        super().__init__(reward_model, reward_ids, reward_attention_mask, read_reward)
        self.weight, self.topk = weight, topk

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        z = scores.float()
        if self.reward_vocab < z.shape[-1]:
            raise UserError(
                f"the reward model reads {self.reward_vocab} token ids but the decoding model "
                f"writes {z.shape[-1]}: they must share one tokenizer")
        candidate_logits, candidates = _over_candidates(z, self.topk)
        with torch.no_grad():
            self._extra_output(input_ids)  # [prompt, tokens so far] in the cache
            rewards = self._candidate_rewards(candidates)
        return _candidates_only(z, candidates,
                                args_scores(candidate_logits, rewards.to(z.device), self.weight))

    def _reset(self) -> None:
        super()._reset()
        self.candidates: torch.Tensor | None = None  # (R, k) ids read after the cached rows
        self.chosen_rows: torch.Tensor | None = None  # (R,) cache rows of generate's rows

    def _advance(self, sources: torch.Tensor, last: torch.Tensor) -> None:
        """Each row continues with one of its source row's candidates, whose cache row already
        holds it: remember that row. Otherwise (a finished row's pad, a -inf token taken by beam
        search) read the last tokens afresh on [prompt, tokens so far]."""
        k = self.candidates.shape[1]
        sources = sources.to(last.device)
        hit = self.candidates[sources] == last  # (R, k)
        if bool(hit.any(dim=-1).all()):
            self.chosen_rows = sources * k + hit.int().argmax(dim=-1)
            return None
        select_cache_rows(self.cache, sources * k)
        self.cache.crop(-1)  # drop the candidate
        self.chosen_rows = None
        return super()._advance(None, last)

    def _candidate_rewards(self, candidates: torch.Tensor) -> torch.Tensor:
        """Rewards of [prompt, tokens so far, candidate], (R, k) ids -> (R, k). Afterwards cache
        row r k + j holds [prompt, tokens so far of row r, candidate j]."""
        rows, k = candidates.shape
        device = self.mask.device
        if self.chosen_rows is None:  # the cache holds R rows of [prompt, tokens so far]
            self.cache.batch_repeat_interleave(k)
        else:  # one copy: every chosen row k times in a row
            select_cache_rows(self.cache, self.chosen_rows.repeat_interleave(k))
        mask = torch.cat([self.mask, self.mask.new_ones((rows, 1))], dim=1)
        candidates = candidates.to(device)
        rewards = self._read(
            self.model, self._forward_extra, input_ids=candidates.reshape(-1, 1),
            attention_mask=mask.repeat_interleave(k, dim=0),
            position_ids=self.next_position.repeat_interleave(k).unsqueeze(-1),
            past_key_values=self.cache, use_cache=True,
        )  # (R k,)
        self.candidates = candidates
        return rewards.view(rows, k)
