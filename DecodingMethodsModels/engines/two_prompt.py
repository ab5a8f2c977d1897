"""The one two-prompt decode engine behind every method that contrasts two prompts (LA, Amulet).

Each question has a preference prompt and a base prompt. Per step the engine runs all of them
as one stacked batch `[pref rows; base rows]` of 2B rows through the model with a KV cache,
takes fp32 log-probs of the last position only, lets a pure `combine` rule turn the pair of
(B, V) log-prob tensors into scores, picks one token per question and appends that same
token to both of its rows. Rows that have finished are dropped from the batch and its cache.

Continuous batching (`stream_two_prompts`, through the engine core's `stream_batches`,
engines/core.py): over a list of questions longer than the batch, the next question is admitted
as soon as a row finishes. Newcomers are prefilled together, their first token chosen from the
prefill, and their cache merged into the running one: both are left-padded with masked zeros to
a common length, so each row keeps its own positions and sees only its own tokens. Columns that
no live row attends to are trimmed away. A question's tokens do not depend on which questions
shared its batch (the tests check batch 1 against continuous batches of questions of very
different lengths).

All 2B prompts of a batch usually open with the same tokens: the chat header and the system
text up to the preference sentence (59 of about 90 tokens for SmolLM2 and the paper's system
prompt). That shared prefix is encoded once per stream, for one row, and its cache copied to
every row of every admission; only the rest of each prompt is left-padded and encoded per row,
so the padding sits between the prefix and each row's own tokens, where the attention mask
hides it.

Where the time goes (timers around the model forward and the combine rule; SmolLM2-135M fp32,
2 CPU threads, 8 questions decoding 128 steps with EOS ignored): the model forward 98.2%, the
closed-form Amulet rule 0.7% (the iterative one at T = 60: 11.3%), everything else (log-softmax,
token choice, the one host sync per step) 1.0%. So the engine keeps to one forward per step for
both prompts and adds nothing per step that grows with the vocabulary beyond the fp32 (rows, V)
combination.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import torch

from DecodingMethodsModels.engines.core import (
    CachedRows,
    DecodeResult,
    SharedPrefix,
    collect,
    forward_kwargs,
    model_input_device,
    read_logits,
    record_tokens,
    settle_tokens,
    stream_batches,
)
from DecodingMethodsModels.rules.combine import CombineRule
from DecodingMethodsModels.rules.penalties import Penalties, apply_penalties
from DecodingMethodsModels.rules.sampling import SamplingSettings, choose_tokens, unusable_rows


@dataclass(frozen=True)
class _Rule:
    """Everything that turns a step's log-probs into tokens."""

    combine: CombineRule
    max_new_tokens: int
    eos: torch.Tensor
    pad_id: int
    sampling: SamplingSettings
    generator: torch.Generator | None
    penalties: Penalties | None


class _Pairs:
    """Live question pairs (a core `Batch`): row i of `rows` is pair i's preference prompt,
    row b + i its base prompt; `logprobs` (2b, V) fp32 are their next-token log-probs."""

    def __init__(self, model, keys: list[int], pref_ids: list[list[int]],
                 base_ids: list[list[int]], prefix: SharedPrefix, rule: _Rule):
        self.rule = rule
        self.rows = CachedRows(model, read_logits, pref_ids + base_ids, rule.pad_id, prefix)
        self.logprobs = torch.log_softmax(self.rows.prefill(), dim=-1)  # (2b, V)
        self.keys = list(keys)
        self.tokens = torch.empty(0, dtype=torch.long)  # (b,) the token each pair chose last
        self.generated: list[list[int]] = [[] for _ in keys]
        # prompt + generated per pair, for penalties
        self.contexts = [list(p) for p in pref_ids] if rule.penalties else None
        self.ended = [False] * len(keys)

    def choose(self) -> list[bool]:
        """Choose each live pair's next token from the (2b, V) log-probs; returns which pairs
        are done. Raises NonFiniteScoresError before anything is kept."""
        rule, live = self.rule, len(self.keys)
        scores = rule.combine(self.logprobs[:live], self.logprobs[live:])  # (b, V)
        if rule.penalties:
            scores = apply_penalties(scores, self.contexts, rule.penalties)
        tokens = choose_tokens(scores, rule.sampling, rule.generator)  # (b,)
        chosen, at_eos = settle_tokens(
            tokens, torch.isin(tokens, rule.eos), unusable_rows(scores), self.keys,
            lambda bad: f"NaN or no finite score for batch rows {bad}")
        self.tokens = tokens
        if self.contexts is not None:
            for i, token in enumerate(chosen):
                if not self.ended[i]:
                    self.contexts[i].append(token)
        return record_tokens(self.generated, chosen, at_eos, rule.max_new_tokens, self.ended)

    def step(self) -> None:
        """One forward of every live row on its pair's last token (kept finished rows are fed
        padding)."""
        tokens = self.tokens
        if any(self.ended):
            ended = torch.tensor(self.ended, device=tokens.device)
            tokens = tokens.masked_fill(ended, self.rule.pad_id)
        self.logprobs = torch.log_softmax(self.rows.step(torch.cat([tokens, tokens])), dim=-1)

    def keep(self, rows: list[int]) -> None:
        """Keep only the pairs at positions `rows`, in both halves of every tensor and the cache."""
        live = len(self.keys)
        index = torch.tensor(rows + [i + live for i in rows], dtype=torch.long)  # on the host
        self.rows.drop(index)
        self.tokens = self.tokens[index[: len(rows)].to(self.tokens.device)]
        self.keys = [self.keys[i] for i in rows]
        self.generated = [self.generated[i] for i in rows]
        self.ended = [self.ended[i] for i in rows]
        if self.contexts is not None:
            self.contexts = [self.contexts[i] for i in rows]

    def mergeable(self) -> bool:
        return self.rows.mergeable()

    def merge(self, newcomers: _Pairs) -> None:
        """One batch of both: [pref running; pref new; base running; base new]."""
        self.rows.merge(newcomers.rows, parts=2)
        self.tokens = torch.cat([self.tokens, newcomers.tokens.to(self.tokens.device)])
        self.keys += newcomers.keys
        self.generated += newcomers.generated
        self.ended += newcomers.ended
        if self.contexts is not None:
            self.contexts += newcomers.contexts


@torch.inference_mode()
def stream_two_prompts(
    model,
    pref_ids: list[list[int]],
    base_ids: list[list[int]],
    combine: CombineRule,
    max_new_tokens: int,
    eos_ids: list[int],
    pad_id: int,
    batch_size: int,
    sampling: SamplingSettings | None = None,
    generator: torch.Generator | None = None,
    penalties: Penalties | None = None,
    share_prefix: bool = True,
    drop_finished: bool = True,
) -> Generator[tuple[int, list[int]], None, int]:
    """Decode every question (a preference and a base prompt each) under `combine`, with at
    most `batch_size` questions in flight; yields (question number, generated ids) as each
    question finishes, the EOS that ended it included.

    `combine(pref_logprobs, base_logprobs) -> scores` takes two fp32 (B, V) tensors.
    `penalties` apply to the combined scores, with the preference prompt and the generated
    tokens as each row's context (rules/penalties.py). A question is admitted as soon as a
    slot frees; on a cache that cannot be merged (sliding-window layers, say),
    and with `drop_finished=False`, the next questions wait for the whole batch instead.
    """
    if len(pref_ids) != len(base_ids) or not pref_ids:
        raise ValueError("need the same positive number of preference and base prompts")
    penalties = penalties if penalties is not None and penalties.active else None
    device = model_input_device(model)
    rule = _Rule(combine, max_new_tokens,
                 torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device), pad_id,
                 sampling or SamplingSettings(), generator, penalties)
    prefix = SharedPrefix(model, pref_ids + base_ids, share_prefix, device,
                          forward_kwargs(model))

    def start(keys: list[int]) -> _Pairs:
        return _Pairs(model, keys, [pref_ids[k] for k in keys], [base_ids[k] for k in keys],
                      prefix, rule)
    return (yield from stream_batches(start, len(pref_ids), batch_size, drop_finished))


def decode_two_prompts(
    model,
    pref_ids: list[list[int]],
    base_ids: list[list[int]],
    combine: CombineRule,
    max_new_tokens: int,
    eos_ids: list[int],
    pad_id: int,
    sampling: SamplingSettings | None = None,
    generator: torch.Generator | None = None,
    drop_finished: bool = True,
    share_prefix: bool = True,
    penalties: Penalties | None = None,
    batch_size: int | None = None,
) -> DecodeResult:
    """`stream_two_prompts` collected in question order; by default every question in one
    batch (`batch_size` = the number of questions)."""
    return collect(stream_two_prompts(
        model, pref_ids, base_ids, combine, max_new_tokens, eos_ids, pad_id,
        batch_size or len(pref_ids), sampling, generator, penalties, share_prefix,
        drop_finished,
    ), len(pref_ids))
