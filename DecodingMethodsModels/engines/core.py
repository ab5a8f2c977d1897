"""The engine core every decoder stands on: padded, cached rows of one model and the loop that
admits questions into them (package README, "The engine core").

- `CachedRows`: one model's KV cache over R rows with the attention mask of its columns and
  each row's next position. Prompts are left-padded after a prefix they all share
  (`SharedPrefix`, encoded once per stream for one row and copied into every admission), so the
  padding sits between the prefix and each row's own tokens, where the mask hides it. Rows are
  selected (`select`, indices may repeat), dropped with the columns no row attends to any more
  (`drop`), and merged with newcomers' rows (`merge`: both left-padded with masked zeros to
  the longer, each row keeping its own positions).
- `stream_batches`: continuous batching over a decoder's `Batch` (the protocol below): at most
  `batch_size` questions in flight, the next ones admitted as soon as rows finish; finished
  questions are yielded and their rows dropped. A question's tokens do not depend on which
  questions shared its batch (tests/test_engine.py, tests/test_reward_guided_stream.py).
- `settle_tokens` and `record_tokens`: the token choice's one host sync per step, the
  NonFiniteScoresError on unusable scores, and each question's generated ids and stop.

The two-prompt engine (prompt_rows.py) and the reward-guided one (guides.py, reward_guided.py,
retokenized_pad.py) are `Batch`es over `CachedRows`; a new decoder plugs in the same way.
"""

from __future__ import annotations

import copy
import inspect
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


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


# ----- padding and the shared prefix ----------------------------------------------------------


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


def model_input_device(model) -> torch.device:
    """Where input ids must live: the embedding's device (the first shard under device_map)."""
    return model.get_input_embeddings().weight.device


def forward_kwargs(model) -> dict:
    """The forward argument that computes logits at the last position only, where there is one."""
    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" in params:
        return {"logits_to_keep": 1}
    if "num_logits_to_keep" in params:
        return {"num_logits_to_keep": 1}
    return {}


def read_logits(model, extra: dict, **inputs) -> torch.Tensor:
    """A causal LM's next-token logits at the last position, fp32 (R, V)."""
    return model(**inputs, **extra).logits[:, -1, :].float()


class SharedPrefix:
    """The opening tokens all prompts of a stream share, encoded once for one row; every
    prefill of newcomers starts from a copy of that cache instead of encoding them again."""

    def __init__(self, model, prompts: list[list[int]], enabled: bool, device, extra: dict):
        self.length = shared_prefix_length(prompts) if enabled else 0
        self.cache = DynamicCache()
        if self.length:
            ids = torch.tensor([prompts[0][: self.length]], dtype=torch.long, device=device)
            model(input_ids=ids, past_key_values=self.cache, use_cache=True, **extra)  # (1, P)

    def cache_for(self, rows: int) -> DynamicCache:
        if not self.length:
            return DynamicCache()
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)  # (rows, ..., P, ...) in every layer
        return cache


# ----- cache rows: select, trim, merge --------------------------------------------------------


def select_cache_rows(cache, rows: torch.Tensor) -> None:
    """Keep only `rows` (a 1-D index) of every layer of `cache`, in that order.

    The index is moved to each layer's own device: a model sharded with device_map='auto' has
    layers on several GPUs, and one index tensor on the input device fails on all the others.
    """
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if torch.is_tensor(keys):
            layer.batch_select_indices(rows.to(keys.device))


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


def cache_mergeable(cache) -> bool:
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


class CachedRows:
    """One model's KV cache over R rows, with the attention mask of its columns (R, L) and each
    row's next position. `read(model, extra, **inputs)` turns a forward into the output wanted
    (`read_logits`: fp32 logits at the last position); `prefix` (default: these prompts' own)
    is copied under every row."""

    def __init__(self, model, read, prompts: list[list[int]], pad_id: int,
                 prefix: SharedPrefix | None = None, share_prefix: bool = True):
        self.model, self.read = model, read
        self.device = model_input_device(model)
        self.extra = forward_kwargs(model) if read is read_logits else {}
        if prefix is None:
            prefix = SharedPrefix(model, prompts, share_prefix, self.device, self.extra)
        shared = prefix.length
        self.cache = prefix.cache_for(len(prompts))
        ids, suffix_mask = left_pad([row[shared:] for row in prompts], pad_id)
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
        select_cache_rows(self.cache, rows)
        rows = rows.to(self.device)
        self.mask, self.positions = self.mask[rows], self.positions[rows]

    def drop(self, rows: torch.Tensor) -> None:
        """`select`, then trim the columns no remaining row attends to."""
        self.select(rows)
        if rows.numel():
            self.mask = trim_columns(self.cache, self.mask)

    def repeat(self, times: int) -> None:
        """Each row `times` times in a row: (R, ...) -> (R times, ...)."""
        self.cache.batch_repeat_interleave(times)
        self.mask = self.mask.repeat_interleave(times, dim=0)
        self.positions = self.positions.repeat_interleave(times, dim=0)

    def mergeable(self) -> bool:
        return cache_mergeable(self.cache)

    def merge(self, other: CachedRows, parts: int = 1) -> None:
        """Take in `other`'s rows (prefilled), ordered as `interleave_rows` does."""
        self.mask = merge_caches(self.cache, self.mask, other.cache, other.mask, parts)
        self.positions = interleave_rows(self.positions, other.positions, parts)


# ----- token choice ---------------------------------------------------------------------------


def settle_tokens(tokens: torch.Tensor, at_eos: torch.Tensor, unusable: torch.Tensor,
                  keys: list[int], describe: Callable[[list[int]], str]
                  ) -> tuple[list[int], list[bool]]:
    """The chosen tokens (B,) and which ended on an EOS, read to the host in one sync; raises
    NonFiniteScoresError (message `describe(question numbers)`) if any row was `unusable`."""
    status = torch.stack([tokens, at_eos.long(), unusable.long()])  # (3, B)
    chosen, ended, bad = status.cpu().tolist()
    if any(bad):
        questions = [keys[i] for i, flag in enumerate(bad) if flag]
        raise NonFiniteScoresError(describe(questions), questions)
    return chosen, [bool(flag) for flag in ended]


def record_tokens(generated: list[list[int]], chosen: list[int], ended: list[bool],
                  max_new_tokens: int, held: list[bool] | None = None) -> list[bool]:
    """Append each question's token (not to those `held` finished) and return which are done:
    an EOS, `max_new_tokens` reached, or already held."""
    done = []
    for i, token in enumerate(chosen):
        waiting = held is not None and held[i]
        if not waiting:
            generated[i].append(token)
        done.append(waiting or ended[i] or len(generated[i]) >= max_new_tokens)
    return done


# ----- continuous batching --------------------------------------------------------------------


class Batch(Protocol):
    """A decoder's live questions; `keys[i]` is the question number of row group i."""

    keys: list[int]
    generated: list[list[int]]  # per question, the ids chosen so far
    ended: list[bool]  # per question, finished but kept (a stream with drop_finished=False)

    def choose(self) -> list[bool]:
        """Choose every question's next token from its current scores; returns which are done."""

    def keep(self, rows: list[int]) -> None:
        """Keep only the questions at positions `rows`, dropping the others' rows."""

    def step(self) -> None:
        """Read the chosen tokens: one forward, giving the next scores."""

    def mergeable(self) -> bool:
        """Whether newcomers' rows can be merged into these."""

    def merge(self, newcomers: Batch) -> None:
        """Take in newcomers (prefilled, first token chosen) after these questions."""


def _retire(batch: Batch, done: list[bool], drop_finished: bool) -> Iterator[tuple[int, list]]:
    """Yield (key, tokens) of finished questions and drop them (or, without dropping, keep them
    until every question is done)."""
    if not drop_finished:
        batch.ended = list(done)
        if not all(done):
            return
    for i, finished in enumerate(done):
        if finished:
            yield batch.keys[i], batch.generated[i]
    if any(done):
        batch.keep([i for i, finished in enumerate(done) if not finished])


@torch.inference_mode()
def stream_batches(start: Callable[[list[int]], Batch], count: int, batch_size: int,
                   drop_finished: bool = True, choose_on_admission: bool = True
                   ) -> Generator[tuple[int, list], None, int]:
    """Decode questions 0..count-1 with at most `batch_size` in flight: `start(keys)` prefills
    newcomers as a Batch; each is admitted as soon as a slot frees (on a batch that cannot be
    merged, and with `drop_finished=False`, only once the whole batch is done). Yields
    (question number, generated ids) as each finishes and returns the number of steps.

    `choose_on_admission`: newcomers choose their first token from their prefill at once, in
    the step their slots freed (the two-prompt engine), or else with the running questions
    at the next step (the reward-guided engine, whose running rows read their last tokens
    before newcomers merge)."""
    waiting = deque(range(count))
    running: Batch | None = None
    steps = 0
    while waiting or (running is not None and running.keys):
        chose = False
        if running is not None and running.keys:
            running.step()
            yield from _retire(running, running.choose(), drop_finished)
            chose = True
        live = len(running.keys) if running is not None else 0
        can_admit = live == 0 or (drop_finished and running.mergeable())
        if waiting and live < batch_size and can_admit:
            keys = [waiting.popleft() for _ in range(min(batch_size - live, len(waiting)))]
            newcomers = start(keys)
            if choose_on_admission:
                yield from _retire(newcomers, newcomers.choose(), drop_finished)
                chose = True
            if newcomers.keys:
                if live == 0:
                    running = newcomers
                else:
                    running.merge(newcomers)
        steps += chose
    return steps


def collect(stream: Generator[tuple[int, list], None, int], count: int) -> DecodeResult:
    """A stream's questions in question order, with the steps it took."""
    found = {}
    while True:
        try:
            key, ids = next(stream)
        except StopIteration as finished:
            return DecodeResult(token_ids=[found[i] for i in range(count)],
                                steps=finished.value or 0)
        found[key] = ids
