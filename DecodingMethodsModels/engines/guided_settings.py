"""The settings of a reward-guided run (ARGS, PAD) and the checks every reward-guided engine
makes on its models, prompts and settings before decoding (no model is run here)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.rules.defaults import DEFAULT_SAMPLE_TEMP
from DecodingMethodsModels.rules.guided import MODES


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
        """Settings for one line of a run config (a pipeline/guided_config.GuidedRunConfig)."""
        temp = DEFAULT_SAMPLE_TEMP if run.sample_temp is None else run.sample_temp
        return cls(weight=run.rm_weight, max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                   pad_id=pad_id, topk=run.topk, mode=run.mode, sample_temp=temp, **options)


def vocabulary_size(model) -> int:
    """Width of a causal LM's logits: rows of its LM head."""
    head = model.get_output_embeddings()
    if head is None:
        raise UserError(f"{type(model).__name__} has no LM head: a causal LM is needed here")
    return head.weight.shape[0]


def check_prompts(*prompt_lists: list[list[int]]) -> None:
    first = prompt_lists[0]
    if not first or any(len(p) != len(first) for p in prompt_lists):
        raise ValueError("need the same positive number of prompts for every model")
    if any(not row for p in prompt_lists for row in p):
        raise ValueError("every prompt needs at least one token")


def check_topk(settings: GuidedSettings, vocab: int) -> None:
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


def check_generator(settings: GuidedSettings, generator: torch.Generator | None) -> None:
    if settings.mode == "topk" and generator is None:
        raise ValueError("mode 'topk' needs a seeded torch.Generator")


def flight_size(settings: GuidedSettings, batch_size: int | None, count: int) -> int:
    """Questions in flight: all of them by default; fewer (continuous batching) only greedy."""
    if batch_size is None or batch_size >= count:
        return count
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if settings.mode == "topk":
        raise ValueError("continuous batching is greedy only: mode 'topk' draws for the whole "
                         "batch from one generator, so it decodes all its questions at once")
    return batch_size
