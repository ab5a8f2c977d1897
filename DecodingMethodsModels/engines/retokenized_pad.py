"""PAD's second rule: a PersRM with another tokenizer than the decoding model's (the package README:
Reward-guided decoding).

PAD's public code (inference/PAD.py of github.com/zjuruizhechen/PAD) takes this rule when the
decoding model's path does not name a Llama-3; here it applies when the PersRM's tokenizer does
not map every token to the decoding model's id. Per step and question:

- the decoding model's ids so far (its prompt, chat template included, and the tokens generated)
  are decoded to text with special tokens skipped, and that text is encoded by the PersRM's
  tokenizer with its special tokens (e.g. a BOS); `u` = the PersRM's logits after those ids;
- each candidate id is decoded alone (special tokens kept; "" read as " ") and stands for the
  first id of that text's encoding by the PersRM's tokenizer (no special tokens);
- `score = z_k + w (u_mapped(k) - z_k)` on raw logits (`pad_retokenized_scores`,
  rules/guided.py).

Caching: the re-encoding of a longer text need not extend the previous re-encoding (a BPE may
merge the new text with the end of the old one). Each row remembers the PersRM ids its cache
holds; a step feeds only the ids after the longest prefix shared by the old and the new
re-encoding, and masks the cached columns past that prefix out of attention. Under causal
attention the kept columns never depended on the masked ones, so the PersRM reads exactly the
new re-encoding, batched, without a fresh forward for the row.
"""

from __future__ import annotations

import dataclasses

import torch

from DecodingMethodsModels.engines.core import CachedRows, read_logits
from DecodingMethodsModels.engines.guided_settings import (
    GuidedSettings,
    check_generator,
    check_prompts,
    check_topk,
    flight_size,
    vocabulary_size,
)
from DecodingMethodsModels.engines.guides import SeparateModels, prefix_of, stream_guided
from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.rules.guided import pad_retokenized_scores


class Retokenizer:
    """Text between the decoding model's ids and the PersRM's, as PAD's second rule reads it.

    `counts` tallies, over every row and step of the engine, whether the new re-encoding
    extended the ids the PersRM had read ("extended", "unchanged") or rewrote their end
    ("rewritten", with "rewritten_ids" the cached ids masked out).
    """

    def __init__(self, tokenizer, persrm_tokenizer):
        self.tokenizer, self.persrm_tokenizer = tokenizer, persrm_tokenizer
        self._mapped: dict[int, int] = {}
        self.counts = dict.fromkeys(("unchanged", "extended", "rewritten", "rewritten_ids"), 0)

    @property
    def pad_id(self) -> int:
        """An id the PersRM can embed, for the masked padding of its batches."""
        for token in (self.persrm_tokenizer.pad_token_id, self.persrm_tokenizer.eos_token_id):
            if token is not None:
                return token
        return 0

    def persrm_ids(self, ids: list[int]) -> list[int]:
        """The PersRM's ids of the decoding model's `ids` (a prompt and the tokens so far)."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        encoded = self.persrm_tokenizer.encode(text, add_special_tokens=True)
        if not encoded:
            raise UserError(f"the PersRM's tokenizer encodes the text {text[:60]!r} to no token: "
                            "PAD's second rule needs at least one")
        return encoded

    def candidate_id(self, token: int) -> int:
        """The PersRM's first id of the decoding model's token `token` decoded alone."""
        if token not in self._mapped:
            text = self.tokenizer.decode([token], skip_special_tokens=False) or " "
            encoded = self.persrm_tokenizer.encode(text, add_special_tokens=False)
            if not encoded:
                raise UserError(f"the PersRM's tokenizer encodes the decoding model's token "
                                f"{token} ({text!r}) to no token")
            self._mapped[token] = encoded[0]
        return self._mapped[token]

    def candidate_ids(self, candidates: torch.Tensor) -> torch.Tensor:
        """(B, k) decoding-model ids -> (B, k) PersRM ids, on the same device."""
        mapped = [[self.candidate_id(t) for t in row] for row in candidates.tolist()]
        return torch.tensor(mapped, dtype=torch.long, device=candidates.device)


def shared_length(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of `a` and `b`."""
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


class _RereadRows(CachedRows):
    """Cached rows that can forget their last ids and read several new ones per step."""

    def rewind(self, row: int, length: int) -> None:
        """Keep the first `length` ids of `row`: the columns of the others leave its attention
        (the row's attended columns hold its ids in order)."""
        columns = self.mask[row].nonzero().squeeze(-1)
        self.mask[row, columns[length:]] = 0

    def read_block(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
             lengths: list[int]) -> torch.Tensor:
        """Read a block of new ids (R, n) with their positions and mask; `lengths`: each row's
        ids afterwards. Returns the output at the block's last column."""
        out = self._forward(ids.to(self.device), positions.to(self.device), mask.to(self.device))
        self.positions = torch.tensor(lengths, device=self.device).unsqueeze(-1)
        return out


class RetokenizedGuide:
    """PAD's PersRM under the second rule: its cache holds each row's latest re-encoding."""

    def __init__(self, persrm, retokenizer: Retokenizer, prompts: list[list[int]],
                 persrm_prompts: list[list[int]], settings: GuidedSettings, prefix):
        self.retokenizer = retokenizer
        self.sequences = [list(p) for p in prompts]  # the decoding model's ids so far per row
        self.cached = [list(p) for p in persrm_prompts]  # the PersRM ids in the cache per row
        self.rows = _RereadRows(persrm, read_logits, persrm_prompts, settings.pad_id, prefix,
                                settings.share_prefix)
        self.logits = self.rows.prefill()  # (b, V') u at the current step

    def values(self, candidates: torch.Tensor) -> torch.Tensor:
        mapped = self.retokenizer.candidate_ids(candidates).to(self.logits.device)
        return self.logits.gather(1, mapped).to(candidates.device)  # (b, k)

    def admit(self, other: RetokenizedGuide) -> None:
        self.rows.merge(other.rows)
        self.logits = torch.cat([self.logits, other.logits.to(self.logits.device)])
        self.sequences += other.sequences
        self.cached += other.cached

    def mergeable(self) -> bool:
        return self.rows.mergeable()

    def advance(self, keep: torch.Tensor | None, choice: torch.Tensor, tokens: torch.Tensor):
        if keep is not None:
            self.rows.drop(keep)
            self.logits = self.logits[keep.to(self.logits.device)]
            kept = keep.tolist()
            self.sequences = [self.sequences[i] for i in kept]
            self.cached = [self.cached[i] for i in kept]
        for sequence, token in zip(self.sequences, tokens.tolist(), strict=True):
            sequence.append(token)
        self._read([self.retokenizer.persrm_ids(s) for s in self.sequences])

    def _read(self, new: list[list[int]]) -> None:
        """Bring every row's cache to its new re-encoding: keep the common prefix, mask the
        rest out, feed the new ids right-aligned in one block."""
        counts = self.retokenizer.counts
        starts = []
        for row, (old, ids) in enumerate(zip(self.cached, new, strict=True)):
            start = shared_length(old, ids)
            if start == len(old) == len(ids):
                counts["unchanged"] += 1
            elif start == len(old):
                counts["extended"] += 1
            else:  # u must come from the last id: re-read it when the new ids end within old
                start = min(start, len(ids) - 1)
                counts["rewritten"] += 1
                counts["rewritten_ids"] += len(old) - start
                self.rows.rewind(row, start)
            starts.append(start)
        width = max(len(ids) - start for ids, start in zip(new, starts, strict=True))
        self.cached = new
        if width == 0:
            return
        ids, mask, positions = _right_aligned(new, starts, width, self.retokenizer.pad_id)
        out = self.rows.read_block(ids, positions, mask, [len(r) for r in new])
        fed = mask[:, -1].bool().to(out.device).unsqueeze(-1)  # (b, 1) rows that read ids
        self.logits = torch.where(fed, out, self.logits)


def _right_aligned(new: list[list[int]], starts: list[int], width: int, pad_id: int):
    """Each row's ids from its start, right-aligned in (b, width) ids, mask and positions (the
    position of id j is j; padding repeats the first position and is masked)."""
    ids = torch.full((len(new), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(new), width), dtype=torch.long)
    positions = torch.zeros((len(new), width), dtype=torch.long)
    for row, (sequence, start) in enumerate(zip(new, starts, strict=True)):
        count = len(sequence) - start
        positions[row] = start
        if count:
            ids[row, width - count:] = torch.tensor(sequence[start:], dtype=torch.long)
            mask[row, width - count:] = 1
            positions[row, width - count:] = torch.arange(start, len(sequence))
    return ids, mask, positions


def stream_pad_retokenized(model, persrm, retokenizer: Retokenizer,
                           prompt_ids: list[list[int]], settings: GuidedSettings,
                           batch_size: int | None = None,
                           generator: torch.Generator | None = None):
    """PAD's second rule over every prompt (reward_guided.stream_pad with a `retokenizer`),
    at most `batch_size` in flight; yields (prompt number, generated ids) as each finishes."""
    check_prompts(prompt_ids)
    check_topk(settings, vocabulary_size(model))
    vocabulary_size(persrm)  # a UserError without an LM head
    check_generator(settings, generator)
    flight = flight_size(settings, batch_size, len(prompt_ids))
    persrm_prompts = [retokenizer.persrm_ids(p) for p in prompt_ids]
    guide_settings = dataclasses.replace(settings, pad_id=retokenizer.pad_id)
    decoder_prefix = prefix_of(model, read_logits, prompt_ids, settings)
    guide_prefix = prefix_of(persrm, read_logits, persrm_prompts, guide_settings)

    def newcomers(keys: list[int]) -> SeparateModels:
        guide = RetokenizedGuide(persrm, retokenizer, [prompt_ids[i] for i in keys],
                                 [persrm_prompts[i] for i in keys], guide_settings,
                                 guide_prefix())
        return SeparateModels(model, [prompt_ids[i] for i in keys], guide, settings,
                              decoder_prefix())
    return stream_guided(newcomers, len(prompt_ids), pad_retokenized_scores, settings,
                         generator, flight)
