"""ARGS and PAD as logits processors inside `model.generate` (`ArgsProcessor`, `PadProcessor`):
like the two-prompt processors (processors.py), the guide model keeps a KV cache of its own
that follows `generate`'s rows, beam search's reordering included, and the scores come from the
pure rules over the top-k candidates (rules/guided.py).

The processor sees the scores `generate` hands it, and `generate` takes every setting the call
leaves unset from the checkpoint's generation config: its penalties (`repetition_penalty`,
`no_repeat_ngram_size`) change the scores before the processor, its sampling warpers
(temperature, top_k, top_p) after it. The engines (reward_guided.decode_args, decode_pad) have
neither. Qwen2-7B-Instruct's config, for one, sets do_sample, temperature 0.7, top_k 20,
top_p 0.8 and repetition_penalty 1.05, so a plain `generate` call samples from penalised scores.
The processors cannot see or undo that (a logits processor is one step of `generate`'s list),
and `generate` keeps its own contract: pass what the engine's setting needs in the call.
"""

from __future__ import annotations

import math

import torch

from DecodingMethodsModels.engines.core import read_logits, select_cache_rows
from DecodingMethodsModels.engines.guided_settings import check_reward_model, vocabulary_size
from DecodingMethodsModels.engines.guides import read_reward
from DecodingMethodsModels.engines.token_ids import SECOND_RULE, check_guide_reads_ids
from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.library.processors import FollowingCache, checked_scores
from DecodingMethodsModels.models.value_head import warn_if_not_applied
from DecodingMethodsModels.rules.guided import args_scores, pad_scores

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
    return checked_scores(out.scatter_(1, candidates, candidate_scores.to(out.dtype)))


def _check_reads_ids(model, guide, role: str, tokenizers, ids, mask) -> None:
    """token_ids.check_guide_reads_ids on the guide's prompts (a list of id lists, or (Q, L)
    left-padded ids with their mask), when `tokenizers` or the decoding `model` is given."""
    if tokenizers is None and model is None:
        return
    if isinstance(ids, torch.Tensor):
        keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        ids = [row[k].tolist() for row, k in zip(ids, keep, strict=True)]
    if tokenizers is None:
        check_guide_reads_ids(model, guide, role)
    else:
        check_guide_reads_ids(None, guide, role, tokenizers, ids)


class PadProcessor(FollowingCache):
    """PAD inside `generate`: `score_k = z_k + w (log_softmax_k(u_k) - log_softmax_k(z_k))`.

    z = `generate`'s scores of the decoding model, candidates = their top-k ids, u = the
    PersRM's LM-head logits after it read `persrm_ids` (Q, L, left padding with
    `persrm_attention_mask`, or a list of Q id lists) and the tokens generated so far; both
    log-softmaxes run over the k candidates only (rules/guided.pad_scores). Every other token
    gets -inf. Up to a per-row constant, score_k = (1 - w) z_k + w u_k.

    - PAD: `persrm` is the PersRM (a causal LM of the same tokenizer) and `persrm_ids` are the
      ids `generate` reads, so both read the same sequence.
    - implicit PAD: `persrm` is the decoding model itself, `persrm_ids` the preference prompts,
      and `generate` reads the base prompts; over the whole vocabulary (k = V) this is Linear
      Alignment with ratio w - 1.

    PAD's value head: load the PersRM with `attach_value_head` applied (models/value_head.py), or a
    warning says that its checkpoint's head is left out.

    The PersRM's logits are read at the decoding model's ids, so both must give the same ids:
    pass `tokenizers=(tokenizer, persrm_tokenizer)` to have them checked on the tokenizers and
    `persrm_ids` (engines/token_ids.py), or `model=` the decoding model to have the models'
    vocabularies and BOS ids checked; a PersRM of another tokenizer is refused, naming PAD's
    second rule (reward_guided.decode_pad with a retokenizer). At every step the PersRM's
    vocabulary must cover the decoding model's.

    The PersRM keeps a KV cache of its own (one token per row per step) that follows beam
    search's reordering. Greedy `generate` without penalties gives reward_guided.decode_pad's
    tokens (mode "greedy"): on a checkpoint whose generation config samples or penalises
    (module docstring) call `generate(..., do_sample=False, repetition_penalty=1.0)`, and
    reset likewise any other score-changing setting it lists (`no_repeat_ngram_size=0`, ...).
    Sampling with `do_sample=True, temperature=0.7, top_p=1.0, repetition_penalty=1.0` (a top_k
    of at least `topk` changes nothing) draws as mode "topk" does.
    """

    def __init__(self, persrm, persrm_ids, persrm_attention_mask=None,
                 weight: float = PAD_WEIGHT, topk: int = TOPK, tokenizers=None, model=None):
        _check_guidance(weight, topk)
        self.persrm_vocab = vocabulary_size(persrm)  # a UserError without an LM head
        warn_if_not_applied(persrm)
        _check_reads_ids(model, persrm, "PersRM", tokenizers, persrm_ids, persrm_attention_mask)
        super().__init__(persrm, persrm_ids, persrm_attention_mask, read_logits)
        self.weight, self.topk = weight, topk

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        z = scores.float()
        if self.persrm_vocab < z.shape[-1]:
            raise UserError(
                f"the PersRM scores {self.persrm_vocab} token ids but the decoding model writes "
                f"{z.shape[-1]}; {SECOND_RULE}")
        candidate_logits, candidates = _over_candidates(z, self.topk)
        with torch.no_grad():
            u = self._extra_output(input_ids)  # (R, V') fp32
        guide = u.gather(1, candidates.to(u.device)).to(z.device)  # (R, k)
        return _candidates_only(z, candidates, pad_scores(candidate_logits, guide, self.weight))


class ArgsProcessor(FollowingCache):
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
    instead, on [prompt, tokens so far]. Greedy `generate` without penalties gives
    reward_guided.decode_args's tokens (mode "greedy"): on a checkpoint whose generation config
    samples or penalises (module docstring) call
    `generate(..., do_sample=False, repetition_penalty=1.0)`, and reset likewise any other
    score-changing setting it lists. Sampling with `do_sample=True, temperature=0.7,
    top_p=1.0, repetition_penalty=1.0` draws as mode "topk" does.
    Both models must give the same ids: `tokenizers=(tokenizer, reward_tokenizer)` has them
    checked on the tokenizers and `reward_ids`, `model=` the decoding model on the models'
    vocabularies and BOS ids (engines/token_ids.py).
    """

    def __init__(self, reward_model, reward_ids, reward_attention_mask=None,
                 weight: float = ARGS_WEIGHT, topk: int = TOPK, tokenizers=None, model=None):
        _check_guidance(weight, topk)
        check_reward_model(reward_model, 0)  # a one-label classifier; its vocabulary: later
        _check_reads_ids(model, reward_model, "reward model", tokenizers, reward_ids,
                         reward_attention_mask)
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
