"""The one two-prompt decode engine behind every method that contrasts two prompts (LA, Amulet).

Each question has a preference prompt and a base prompt. Per step the engine runs all of them
as one stacked batch `[pref rows; base rows]` of 2B rows through the model with a KV cache,
takes fp32 log-probs of the last position only, lets a pure `combine` rule turn the pair of
(B, V) log-prob tensors into scores, picks one token per question and appends that same
token to both of its rows. Rows that have finished are dropped from the batch and its cache.

Continuous batching (`stream_two_prompts`): over a list of questions longer than the batch,
the next question is admitted as soon as a row finishes. Newcomers are prefilled together,
their first token chosen from the prefill, and their cache merged into the running one: both
are left-padded with masked zeros to a common length, so each row keeps its own positions and
sees only its own tokens. Columns that no live row attends to are trimmed away. A question's
tokens do not depend on which questions shared its batch (the tests check batch 1 against
continuous batches of questions of very different lengths).

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

import copy
import inspect
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from DecodingMethodsModels.rules.combine import CombineRule
from DecodingMethodsModels.rules.penalties import Penalties, apply_penalties
from DecodingMethodsModels.rules.sampling import SamplingSettings, choose_tokens, unusable_rows


class NonFiniteScoresError(RuntimeError):
    """A row's scores hold NaN or nothing finite: no token can be chosen honestly. `rows` are
    the question numbers concerned, when known."""

    def __init__(self, message: str, rows: list[int] | None = None):
        super().__init__(message)
        self.rows = rows or []


@dataclass
class DecodeResult:
    token_ids: list[list[int]]  # generated ids per question, ending EOS included
    steps: int = 0  # forward passes after the prefill, where the decoder counts them


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token rows to one length: ids (R, L) and attention mask (R, L)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask


def shared_prefix_length(rows: list[list[int]]) -> int:
    """Length of the longest prefix common to every row, leaving each row at least one token."""
    shortest = min(len(r) for r in rows)
    length = 0
    while length < shortest - 1 and all(r[length] == rows[0][length] for r in rows):
        length += 1
    return length


def _prefix_cache(model, prefix: list[int], rows: int, device, extra: dict) -> DynamicCache:
    """A KV cache holding `prefix` for each of `rows` rows, encoded once; empty if no prefix."""
    cache = DynamicCache()
    if prefix:
        ids = torch.tensor([prefix], dtype=torch.long, device=device)  # (1, P)
        model(input_ids=ids, past_key_values=cache, use_cache=True, **extra)
        cache.batch_repeat_interleave(rows)  # (rows, ..., P, ...) in every layer
    return cache


class _SharedPrefix:
    """The opening tokens all prompts of a stream share, encoded once for one row; every
    prefill of newcomers starts from a copy of that cache instead of encoding them again."""

    def __init__(self, model, prompts: list[list[int]], enabled: bool, device, extra: dict):
        self.length = shared_prefix_length(prompts) if enabled else 0
        self.cache = _prefix_cache(model, prompts[0][: self.length], 1, device, extra)

    def cache_for(self, rows: int) -> DynamicCache:
        if not self.length:
            return DynamicCache()
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return cache


def select_cache_rows(cache, rows: torch.Tensor) -> None:
    """Keep only `rows` (a 1-D index) of every layer of `cache`, in that order.

    The index is moved to each layer's own device: a model sharded with device_map='auto' has
    layers on several GPUs, and one index tensor on the input device fails on all the others.
    """
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if torch.is_tensor(keys):
            layer.batch_select_indices(rows.to(keys.device))


def model_input_device(model) -> torch.device:
    """Where input ids must live: the embedding's device (the first shard under device_map)."""
    return model.get_input_embeddings().weight.device


def _forward_kwargs(model) -> dict:
    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" in params:
        return {"logits_to_keep": 1}
    if "num_logits_to_keep" in params:
        return {"num_logits_to_keep": 1}
    return {}


@dataclass
class _Rows:
    """Live question pairs. Row i of the cache is pair i's preference prompt, row b + i its base
    prompt; `mask` covers every cached column, `next_position` is each row's next position."""

    keys: list[int]  # the caller's question number of each pair
    cache: DynamicCache
    mask: torch.Tensor  # (2b, L) long
    next_position: torch.Tensor  # (2b,)
    tokens: torch.Tensor  # (b,) the token each pair chose last
    generated: list[list[int]]
    contexts: list[list[int]] | None  # prompt + generated per pair, for penalties
    ended: list[bool]

    @property
    def size(self) -> int:
        return len(self.keys)


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


def _prefill(model, keys: list[int], pref_ids: list[list[int]], base_ids: list[list[int]],
             pad_id: int, prefix: _SharedPrefix, penalties: bool) -> tuple[_Rows, torch.Tensor]:
    """Encode the 2n prompts of n newcomers after `prefix`: their rows, and fp32 log-probs
    (2n, V)."""
    device = model_input_device(model)
    extra = _forward_kwargs(model)
    prompts = pref_ids + base_ids
    shared = prefix.length
    cache = prefix.cache_for(len(prompts))
    ids, suffix_mask = left_pad([row[shared:] for row in prompts], pad_id)  # (2n, L - P)
    ids, suffix_mask = ids.to(device), suffix_mask.to(device)
    mask = torch.cat([torch.ones((len(prompts), shared), dtype=torch.long, device=device),
                      suffix_mask], dim=1)  # (2n, L)
    positions = shared + (suffix_mask.cumsum(-1) - 1).clamp(min=0)  # (2n, L - P)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                past_key_values=cache, use_cache=True, **extra)
    rows = _Rows(
        keys=list(keys), cache=out.past_key_values, mask=mask,
        next_position=positions[:, -1] + 1, tokens=torch.empty(0, dtype=torch.long),
        generated=[[] for _ in keys],
        contexts=[list(p) for p in pref_ids] if penalties else None,
        ended=[False] * len(keys),
    )
    return rows, torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)


def _step(model, rows: _Rows, pad_id: int) -> torch.Tensor:
    """One forward of every live row on its pair's last token: fp32 log-probs (2b, V)."""
    device = model_input_device(model)
    tokens = rows.tokens
    if any(rows.ended):  # kept finished rows are fed padding
        ended = torch.tensor(rows.ended, device=device)
        tokens = tokens.masked_fill(ended, pad_id)
    step_input = torch.cat([tokens, tokens]).unsqueeze(-1)  # (2b, 1)
    rows.mask = torch.cat([rows.mask, torch.ones_like(rows.mask[:, :1])], dim=1)
    out = model(input_ids=step_input, attention_mask=rows.mask,
                position_ids=rows.next_position.unsqueeze(-1), past_key_values=rows.cache,
                use_cache=True, **_forward_kwargs(model))
    rows.cache = out.past_key_values
    rows.next_position = rows.next_position + 1
    return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)


def _advance(rows: _Rows, logprobs: torch.Tensor, rule: _Rule) -> list[bool]:
    """Choose each live pair's next token from (2b, V) log-probs; returns which pairs are done
    (EOS, or max_new_tokens reached). Raises NonFiniteScoresError before anything is kept."""
    live = rows.size
    scores = rule.combine(logprobs[:live], logprobs[live:])  # (b, V)
    if rule.penalties:
        scores = apply_penalties(scores, rows.contexts, rule.penalties)
    tokens = choose_tokens(scores, rule.sampling, rule.generator)  # (b,)
    status = torch.stack([torch.isin(tokens, rule.eos), unusable_rows(scores)]).cpu()  # one sync
    if status[1].any():
        bad = [rows.keys[i] for i in status[1].nonzero().flatten().tolist()]
        raise NonFiniteScoresError(f"NaN or no finite score for batch rows {bad}", bad)
    rows.tokens = tokens
    done = []
    for i, token in enumerate(tokens.tolist()):
        if not rows.ended[i]:
            rows.generated[i].append(token)
            if rows.contexts is not None:
                rows.contexts[i].append(token)
        done.append(rows.ended[i] or bool(status[0][i])
                    or len(rows.generated[i]) >= rule.max_new_tokens)
    return done


def _keep(rows: _Rows, keep: list[int]) -> None:
    """Keep only the pairs at positions `keep`, in both halves of every tensor and the cache."""
    live = rows.size
    index = torch.tensor(keep + [i + live for i in keep], dtype=torch.long)  # on the host
    select_cache_rows(rows.cache, index)
    index = index.to(rows.mask.device)
    rows.mask, rows.next_position = rows.mask[index], rows.next_position[index]
    rows.tokens = rows.tokens[index[: len(keep)]]
    for name in ("keys", "generated", "contexts", "ended"):
        values = getattr(rows, name)
        if values is not None:
            setattr(rows, name, [values[i] for i in keep])


def trim_columns(cache, mask: torch.Tensor) -> torch.Tensor:
    """Drop the leading cache columns that no row attends to (left by finished rows) from every
    layer of `cache`; returns the mask (R, L) without them."""
    unused = int((mask.sum(dim=0) > 0).long().argmax())  # first column anyone uses
    if unused > 0:
        mask = mask[:, unused:]
        for layer in cache.layers:
            layer.keys = layer.keys[:, :, unused:, :]
            layer.values = layer.values[:, :, unused:, :]
    return mask


def _trim(rows: _Rows) -> None:
    rows.mask = trim_columns(rows.cache, rows.mask)


def _mergeable(cache) -> bool:
    """Plain (B, H, L, D) dynamic layers only: others keep state that padding would break."""
    return all(type(layer) is DynamicLayer and torch.is_tensor(layer.keys)
               for layer in cache.layers)


def _left_pad_to(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def interleave_rows(a: torch.Tensor, b: torch.Tensor, parts: int = 1, dim: int | None = None,
                    width: int = 0) -> torch.Tensor:
    """[a_1; b_1; ...; a_parts; b_parts] along rows, where a_i and b_i are the i-th of `parts`
    equal row blocks of `a` and `b`; with `dim`, both are first left-padded with zeros along
    it to `width`. `b` is moved to `a`'s device."""
    if dim is not None:
        a, b = _left_pad_to(a, width, dim), _left_pad_to(b, width, dim)
    a_blocks = a.split(a.shape[0] // parts)
    b_blocks = b.to(a.device).split(b.shape[0] // parts)
    return torch.cat([block for pair in zip(a_blocks, b_blocks, strict=True) for block in pair])


def merge_caches(cache, mask: torch.Tensor, other, other_mask: torch.Tensor,
                 parts: int = 1) -> torch.Tensor:
    """Fold the rows of cache `other` into `cache` (in place, as `interleave_rows` orders them
    with `parts` blocks), both left-padded with masked zeros to the longer; returns the merged
    attention mask. Each row keeps its own positions and sees only its own tokens."""
    width = max(mask.shape[1], other_mask.shape[1])
    for mine, theirs in zip(cache.layers, other.layers, strict=True):
        mine.keys = interleave_rows(mine.keys, theirs.keys, parts, 2, width)
        mine.values = interleave_rows(mine.values, theirs.values, parts, 2, width)
    return interleave_rows(mask, other_mask, parts, 1, width)


def _merge(running: _Rows, newcomers: _Rows) -> _Rows:
    """One batch of both: [pref running; pref new; base running; base new], every tensor
    left-padded with masked zeros to the longer of the two caches."""
    running.mask = merge_caches(running.cache, running.mask, newcomers.cache, newcomers.mask,
                                parts=2)
    running.next_position = interleave_rows(running.next_position, newcomers.next_position, 2)
    running.tokens = torch.cat([running.tokens, newcomers.tokens.to(running.tokens.device)])
    running.keys += newcomers.keys
    running.generated += newcomers.generated
    running.ended += newcomers.ended
    if running.contexts is not None:
        running.contexts += newcomers.contexts
    return running


def _retire(rows: _Rows, done: list[bool], drop_finished: bool):
    """Yield (key, tokens) of finished pairs and remove them (or, without dropping, keep them
    until every pair is done)."""
    if not drop_finished:
        rows.ended = list(done)
        if not all(done):
            return
    for i, finished in enumerate(done):
        if finished:
            yield rows.keys[i], rows.generated[i]
    if any(done):
        _keep(rows, [i for i, finished in enumerate(done) if not finished])
        if rows.size:
            _trim(rows)


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
) -> Iterator[tuple[int, list[int]]]:
    """Decode every question (a preference and a base prompt each) under `combine`, with at
    most `batch_size` questions in flight; yields (question number, generated ids) as each
    question finishes, the EOS that ended it included.

    `combine(pref_logprobs, base_logprobs) -> scores` takes two fp32 (B, V) tensors.
    `penalties` apply to the combined scores, with the preference prompt and the generated
    tokens as each row's context (DecodingMethodsModels/rules/penalties.py). A question is admitted
    as soon as a slot frees; on a cache that cannot be merged (sliding-window layers, say),
    and with `drop_finished=False`, the next questions wait for the whole batch instead.
    """
    if len(pref_ids) != len(base_ids) or not pref_ids:
        raise ValueError("need the same positive number of preference and base prompts")
    penalties = penalties if penalties is not None and penalties.active else None
    device = model_input_device(model)
    rule = _Rule(combine, max_new_tokens,
                 torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device), pad_id,
                 sampling or SamplingSettings(), generator, penalties)
    waiting = deque(range(len(pref_ids)))
    prefix = _SharedPrefix(model, pref_ids + base_ids, share_prefix, device,
                           _forward_kwargs(model))
    rows: _Rows | None = None
    while waiting or (rows is not None and rows.size):
        if rows is not None and rows.size:
            done = _advance(rows, _step(model, rows, pad_id), rule)
            yield from _retire(rows, done, drop_finished)
        live = rows.size if rows is not None else 0
        can_admit = live == 0 or (drop_finished and _mergeable(rows.cache))
        if waiting and live < batch_size and can_admit:
            keys = [waiting.popleft() for _ in range(min(batch_size - live, len(waiting)))]
            newcomers, logprobs = _prefill(model, keys, [pref_ids[k] for k in keys],
                                           [base_ids[k] for k in keys], pad_id, prefix,
                                           penalties is not None)
            done = _advance(newcomers, logprobs, rule)
            yield from _retire(newcomers, done, drop_finished)
            if newcomers.size:
                rows = newcomers if live == 0 else _merge(rows, newcomers)


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
    found = dict(stream_two_prompts(
        model, pref_ids, base_ids, combine, max_new_tokens, eos_ids, pad_id,
        batch_size or len(pref_ids), sampling, generator, penalties, share_prefix,
        drop_finished,
    ))
    return DecodeResult(token_ids=[found[i] for i in range(len(pref_ids))])
