"""The prompt-rows engine behind every method that contrasts prompts (LA, Amulet, CoSteer).

Each question has a preference prompt and a base prompt; each `Reader` is a model reading some
of them, as one block of rows per prompt. LA and Amulet have one reader, the model on
`[pref rows; base rows]`; CoSteer with a small model of its own has two, the LLM on its base
rows and the SLM on `[pref; base]` (they may sit on different devices). Per step every reader
runs its rows as one batch with a KV cache, takes fp32 log-probs of the last position only, a
pure `combine` rule turns the blocks' (B, V) log-prob tensors into scores, one token is picked
per question and that same token appended to all of its rows. Rows that have finished are
dropped from the batch and every cache.

Continuous batching (`stream_two_prompts`, through the engine core's `stream_batches`,
engines/core.py): over a list of questions longer than the batch, the next question is admitted
as soon as a row finishes. Newcomers are prefilled together, their first token chosen from the
prefill, and their cache merged into the running one: both are left-padded with masked zeros to
a common length, so each row keeps its own positions and sees only its own tokens. Columns that
no live row attends to are trimmed away. A question's tokens do not depend on which questions
shared its batch (the tests check batch 1 against continuous batches of questions of very
different lengths).

All prompts a reader reads usually open with the same tokens: the chat header and the system
text up to the preference sentence (59 of about 90 tokens for SmolLM2 and the paper's system
prompt). That shared prefix is encoded once per stream and reader, for one row, and copied to
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

from collections.abc import Callable, Generator
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
class Reader:
    """One model reading some of each question's prompts: `prompts` names them ("pref",
    "base"), and its rows are one block per name, `[block 1 rows; block 2 rows; ...]`. The
    two-prompt methods have one reader, `Reader(model, ("pref", "base"))`; CoSteer with a small
    model of its own has two, the LLM on ("base",) and the SLM on ("pref", "base")."""

    model: object
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class _Rule:
    """Everything that turns a step's log-probs into tokens."""

    combine: Callable[..., torch.Tensor]
    max_new_tokens: int
    eos: torch.Tensor
    pad_id: int
    sampling: SamplingSettings
    generator: torch.Generator | None
    penalties: Penalties | None


class _Questions:
    """Live questions (a core `Batch`): for each reader, a `CachedRows` whose block k holds
    every live question's prompt `reader.prompts[k]`; `logprobs` are the blocks' fp32 (b, V)
    next-token log-probs in reader order, on the first reader's device (where tokens are
    chosen), cut to the vocabulary all readers share."""

    def __init__(self, readers: tuple[Reader, ...], keys: list[int],
                 prompts: dict[str, list[list[int]]], prefixes: list[SharedPrefix],
                 rule: _Rule, context: str):
        self.rule, self.readers = rule, readers
        self.rows = [
            CachedRows(r.model, read_logits, [prompts[name][k] for name in r.prompts
                                              for k in keys], rule.pad_id, prefix)
            for r, prefix in zip(readers, prefixes, strict=True)]
        self.logprobs = self._blocks([rows.prefill() for rows in self.rows])
        self.keys = list(keys)
        self.tokens = torch.empty(0, dtype=torch.long)  # (b,) the token each question chose last
        self.generated: list[list[int]] = [[] for _ in keys]
        # prompt + generated per question, for penalties
        self.contexts = [list(prompts[context][k]) for k in keys] if rule.penalties else None
        self.ended = [False] * len(keys)

    def _blocks(self, logits: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each reader's (blocks * b, V) logits as fp32 (b, V) log-probs per block."""
        vocab = min(x.shape[-1] for x in logits)  # a model's padded embedding rows never decode
        device = logits[0].device
        out = []
        for reader, x in zip(self.readers, logits, strict=True):
            logprobs = torch.log_softmax(x, dim=-1)[:, :vocab].to(device)  # (blocks * b, V)
            out += logprobs.chunk(len(reader.prompts))
        return out

    def choose(self) -> list[bool]:
        """Choose each live question's next token from its log-probs; returns which questions
        are done. Raises NonFiniteScoresError before anything is kept."""
        rule = self.rule
        scores = rule.combine(*self.logprobs)  # (b, V)
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
        """One forward of every live row of every reader on its question's last token (kept
        finished rows are fed padding)."""
        tokens = self.tokens
        if any(self.ended):
            ended = torch.tensor(self.ended, device=tokens.device)
            tokens = tokens.masked_fill(ended, self.rule.pad_id)
        self.logprobs = self._blocks([
            rows.step(torch.cat([tokens] * len(reader.prompts)))
            for reader, rows in zip(self.readers, self.rows, strict=True)])

    def keep(self, rows: list[int]) -> None:
        """Keep only the questions at positions `rows`, in every block of every reader."""
        live = len(self.keys)
        for reader, cached in zip(self.readers, self.rows, strict=True):
            index = torch.tensor([i + k * live for k in range(len(reader.prompts)) for i in rows],
                                 dtype=torch.long)  # on the host
            cached.drop(index)
        self.tokens = self.tokens[torch.tensor(rows, dtype=torch.long).to(self.tokens.device)]
        self.keys = [self.keys[i] for i in rows]
        self.generated = [self.generated[i] for i in rows]
        self.ended = [self.ended[i] for i in rows]
        if self.contexts is not None:
            self.contexts = [self.contexts[i] for i in rows]

    def mergeable(self) -> bool:
        return all(rows.mergeable() for rows in self.rows)

    def merge(self, newcomers: _Questions) -> None:
        """One batch of both, block by block: [block 1 running; block 1 new; ...]."""
        for reader, mine, theirs in zip(self.readers, self.rows, newcomers.rows, strict=True):
            mine.merge(theirs, parts=len(reader.prompts))
        self.tokens = torch.cat([self.tokens, newcomers.tokens.to(self.tokens.device)])
        self.keys += newcomers.keys
        self.generated += newcomers.generated
        self.ended += newcomers.ended
        if self.contexts is not None:
            self.contexts += newcomers.contexts


@torch.inference_mode()
def stream_prompt_rows(
    readers: tuple[Reader, ...] | list[Reader],
    prompts: dict[str, list[list[int]]],
    combine: Callable[..., torch.Tensor],
    max_new_tokens: int,
    eos_ids: list[int],
    pad_id: int,
    batch_size: int,
    sampling: SamplingSettings | None = None,
    generator: torch.Generator | None = None,
    penalties: Penalties | None = None,
    share_prefix: bool = True,
    drop_finished: bool = True,
    context: str = "pref",
) -> Generator[tuple[int, list[int]], None, int]:
    """Decode every question under `combine`, each reader's model reading its prompts of the
    question (`prompts[name][k]`), with at most `batch_size` questions in flight; yields
    (question number, generated ids) as each question finishes, the EOS that ended it included.

    `combine(*logprobs)` takes one fp32 (B, V) tensor per block, in reader order, on the first
    reader's device, where tokens are chosen (its models may sit on other devices).
    `penalties` apply to the combined scores, with `prompts[context]` and the generated tokens
    as each row's context (rules/penalties.py). A question is admitted as soon as a slot frees;
    on a cache that cannot be merged (sliding-window layers, say), and with
    `drop_finished=False`, the next questions wait for the whole batch instead.
    """
    readers = tuple(readers)
    counts = {len(rows) for rows in prompts.values()}
    if len(counts) != 1 or not counts.pop():
        raise ValueError("need the same positive number of prompts of every kind")
    count = len(next(iter(prompts.values())))
    penalties = penalties if penalties is not None and penalties.active else None
    device = model_input_device(readers[0].model)
    rule = _Rule(combine, max_new_tokens,
                 torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device), pad_id,
                 sampling or SamplingSettings(), generator, penalties)
    prefixes = [SharedPrefix(r.model, [row for name in r.prompts for row in prompts[name]],
                             share_prefix, model_input_device(r.model), forward_kwargs(r.model))
                for r in readers]

    def start(keys: list[int]) -> _Questions:
        return _Questions(readers, keys, prompts, prefixes, rule, context)
    return (yield from stream_batches(start, count, batch_size, drop_finished))


def decode_prompt_rows(readers, prompts: dict[str, list[list[int]]], combine,
                       max_new_tokens: int, eos_ids: list[int], pad_id: int,
                       sampling: SamplingSettings | None = None,
                       generator: torch.Generator | None = None, penalties: Penalties | None = None,
                       batch_size: int | None = None, drop_finished: bool = True) -> DecodeResult:
    """`stream_prompt_rows` collected in question order; by default every question in one
    batch."""
    count = len(next(iter(prompts.values())))
    return collect(stream_prompt_rows(
        readers, prompts, combine, max_new_tokens, eos_ids, pad_id, batch_size or count,
        sampling, generator, penalties, drop_finished=drop_finished), count)


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
    """Decode every question (a preference and a base prompt each) under
    `combine(pref_logprobs, base_logprobs)`, one model reading both as stacked `[pref; base]`
    rows (`stream_prompt_rows` with one reader); yields (question number, generated ids) as
    each question finishes, the EOS that ended it included."""
    if len(pref_ids) != len(base_ids) or not pref_ids:
        raise ValueError("need the same positive number of preference and base prompts")
    return (yield from stream_prompt_rows(
        (Reader(model, ("pref", "base")),), {"pref": pref_ids, "base": base_ids}, combine,
        max_new_tokens, eos_ids, pad_id, batch_size, sampling, generator, penalties,
        share_prefix, drop_finished))


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
