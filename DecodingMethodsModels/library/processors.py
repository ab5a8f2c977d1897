"""LA, Amulet and CoSteer as logits processors: `model.generate(pref_ids, logits_processor=[p])`
(CoSteer: `llm.generate(plain_ids, logits_processor=[CoSteerProcessor(slm, ...)])`).

`generate` runs the preference prompt as usual; the processor runs the second (base) prompt
through the same model with a KV cache of its own, one new token per step after a prefill, and
returns `combine(log p_pref, log p_base)` from the project's pure rules (rules/combine.py), both
log-softmaxed in fp32 here. What `generate` does around it is its own: penalties
(`repetition_penalty`, `no_repeat_ngram_size`) on the preference prompt's scores before it,
temperature, top-k and top-p warpers after it, sampling, beam search, stopping criteria,
streamers. `generate` takes every setting the call leaves unset from the checkpoint's
generation config (Qwen2-7B-Instruct's samples with temperature 0.7, top_k 20 and top_p 0.8
after a repetition penalty of 1.05), while the engine (engines/prompt_rows.decode_two_prompts)
is greedy unless told and applies a penalty to the combined scores: for the engine's greedy
tokens on such a checkpoint, call `generate(..., do_sample=False, repetition_penalty=1.0)` and
reset likewise any other score-changing setting its `generation_config` lists.

Beam search: `generate` hands a processor `input_ids` of batch * num_beams rows and reorders the
beams between steps without telling it. Each call finds, for every row, the row of the previous
call whose tokens it extends (`beam_sources`) and reorders the base cache to match; rows of one
question share a base prompt, so only the cache moves.

This costs one extra forward of one token per row per step, like transformers' own
`guidance_scale` CFG; the stacked engine (engines/prompt_rows.decode_two_prompts, also reachable
through `model.generate(custom_generate=...)`, see api.py) does both prompts in one forward.

The reward-guided methods (ARGS and PAD) follow the same pattern in guided_processors.py.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, LogitsProcessor

from DecodingMethodsModels.engines.core import (
    NonFiniteScoresError,
    forward_kwargs,
    model_input_device,
    read_logits,
    select_cache_rows,
)
from DecodingMethodsModels.pipeline.methods import DecodeSettings
from DecodingMethodsModels.rules.combine import CombineRule, amulet_rule, la_rule
from DecodingMethodsModels.rules.costeer import costeer_rule
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


def as_batch(ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt ids (Q, L) and mask (Q, L) from a tensor (mask defaults to ones) or id lists."""
    if not torch.is_tensor(ids):
        from DecodingMethodsModels.engines.core import left_pad

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


class FollowingCache(LogitsProcessor):
    """A second model's KV cache over the rows of one `generate` call, following its beams.

    `extra_ids` (Q, L) with `extra_attention_mask` (left padding), or a list of Q id lists, is
    what the second model reads before the generated tokens, for each of the Q questions of the
    `generate` call in the same order. `read(model, extra_kwargs, **inputs)` is the model's
    output at the last position (reward_guided's `read_logits` or `read_reward`).
    One processor serves one `generate` call at a time; a new call (another prompt or length)
    starts afresh, so it can be reused.
    """

    def __init__(self, model, extra_ids, extra_attention_mask, read):
        self.model = model
        self._read = read
        self.extra_ids, self.extra_mask = as_batch(extra_ids, extra_attention_mask)
        self._forward_extra = forward_kwargs(model) if read is read_logits else {}
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


class TwoPromptProcessor(FollowingCache):
    """Scores of `generate`'s prompt combined with those of a second prompt, rule given.

    `extra_ids` (Q, L) with `extra_attention_mask` (left padding), or a list of Q id lists, is
    the second prompt of each of the Q questions of the `generate` call, in the same order.
    `rule(own_logprobs, extra_logprobs) -> scores` takes fp32 (rows, V) log-probs: for LA and
    Amulet `generate` reads the preference prompt and the extra prompt is the base prompt.
    """

    def __init__(self, model, extra_ids, rule: CombineRule, extra_attention_mask=None):
        super().__init__(model, extra_ids, extra_attention_mask, read_logits)
        self.rule = rule

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        # Greedy and sampling hand over raw logits, beam search log-softmaxed ones:
        # log_softmax is idempotent, so both become the same fp32 log-probs.
        own = torch.log_softmax(scores.float(), dim=-1)  # (R, V)
        with torch.no_grad():
            extra = torch.log_softmax(self._extra_output(input_ids), dim=-1)
        return checked_scores(self.rule(own, extra.to(own.device)))


def checked_scores(scores: torch.Tensor) -> torch.Tensor:
    bad = unusable_rows(scores)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise NonFiniteScoresError(f"NaN or no finite score for batch rows {rows}")
    return scores


class LinearAlignmentProcessor(TwoPromptProcessor):
    """Linear Alignment inside `generate`: `log p_pref + ratio (log p_pref - log p_base)`.

    `generate` reads the preference prompts; `base_ids` (with `base_attention_mask`) are the
    base prompts of the same questions. The scores are not renormalised (as transformers' CFG).
    Greedy without penalties, the engine's tokens: on a checkpoint whose generation config
    samples or penalises, `generate(..., do_sample=False, repetition_penalty=1.0)` (module
    docstring).
    """

    def __init__(self, model, base_ids, base_attention_mask=None,
                 ratio: float = PAPER.reinforce_ratio):
        super().__init__(model, base_ids, la_rule(ratio), base_attention_mask)


class AmuletProcessor(TwoPromptProcessor):
    """Amulet inside `generate`: T FTRL iterations per token (combine.amulet_rule).

    `generate` reads the preference prompts; `base_ids` (with `base_attention_mask`) are the
    base prompts of the same questions. `solver` "closed_form" or "iterative" (same tokens).
    Greedy without penalties, the engine's tokens: on a checkpoint whose generation config
    samples or penalises, `generate(..., do_sample=False, repetition_penalty=1.0)` (module
    docstring).
    """

    def __init__(self, model, base_ids, base_attention_mask=None,
                 iterations: int = PAPER.iteration_num, alpha: float = PAPER.alpha,
                 player_lambda: float = PAPER.player_lambda, eta: float = PAPER.eta,
                 solver: str = PAPER.amulet_solver):
        rule = amulet_rule(iterations, alpha, player_lambda, eta, solver)
        super().__init__(model, base_ids, rule, base_attention_mask)


class CoSteerProcessor(LogitsProcessor):
    """CoSteer inside the LLM's `generate`: `pi_T = log_softmax(b + c_T D)` (rules/costeer.py).

    `generate` reads the plain prompts (b: its own scores); the small model `slm` reads
    `pers_ids` (the personalised prompts) and `plain_ids` (the plain prompts in the SLM's
    ids; its tokenizer must be the LLM's), each with a KV cache of its own that follows
    generate's rows (greedy, sampling, beam search). `plain_ids` None: the SLM is generate's
    own model, whose scores on the plain prompt are then used, not computed twice. Masks go
    with tensors of left-padded ids; lists of id lists need none.
    """

    def __init__(self, slm, pers_ids, plain_ids=None, pers_attention_mask=None,
                 plain_attention_mask=None, iterations: int = PAPER.costeer.iterations,
                 alpha: float = PAPER.costeer.alpha, beta: float = PAPER.costeer.beta,
                 player_lambda: float = PAPER.costeer.player_lambda,
                 eta: float = PAPER.costeer.eta, solver: str = PAPER.costeer.solver):
        self.rule = costeer_rule(iterations, alpha, beta, player_lambda, eta, solver)
        self.pers = FollowingCache(slm, pers_ids, pers_attention_mask, read_logits)
        self.plain = (None if plain_ids is None else
                      FollowingCache(slm, plain_ids, plain_attention_mask, read_logits))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        base = torch.log_softmax(scores.float(), dim=-1)  # (R, V) the LLM on the plain prompt
        with torch.no_grad():
            pers = torch.log_softmax(self.pers._extra_output(input_ids), dim=-1)
            plain = base if self.plain is None else torch.log_softmax(
                self.plain._extra_output(input_ids), dim=-1)
        vocab = min(base.shape[-1], pers.shape[-1])  # a padded embedding's rows never decode
        combined = self.rule(base[:, :vocab], pers[:, :vocab].to(base.device),
                             plain[:, :vocab].to(base.device))
        if vocab < base.shape[-1]:
            combined = torch.cat([combined, combined.new_full(
                (combined.shape[0], base.shape[-1] - vocab), float("-inf"))], dim=-1)
        return checked_scores(combined)
