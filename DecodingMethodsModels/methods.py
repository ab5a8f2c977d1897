"""The five methods as a registry of runners with one signature.

A runner takes a model, the preference and base prompt ids of a batch and the decode
settings, and returns the generated ids per question (with the ending EOS when there is one).
base, pref and beam are `model.generate` calls; la and amulet go through the two-prompt engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig

from .combine import CombineRule, amulet_rule, la_rule
from .engine import decode_two_prompts, left_pad, model_input_device
from .sampling import SamplingSettings


@dataclass(frozen=True)
class DecodeSettings:
    max_new_tokens: int
    eos_ids: list[int]
    pad_id: int
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    num_beams: int = 16
    reinforce_ratio: float = 2.0
    iteration_num: int = 60
    alpha: float = 2.0
    player_lambda: float = 2.0
    eta: float = 10.0
    amulet_solver: str = "closed_form"


Runner = Callable[..., list[list[int]]]


def generate_on(
    model, prompts: list[list[int]], settings: DecodeSettings, num_beams: int, seed: int
) -> list[list[int]]:
    """`model.generate` on left-padded prompts, with an explicit mask and all EOS ids.

    The generation config is built from our settings alone, so a model's own sampling defaults
    (e.g. temperature, repetition penalty) never leak into one method and not another.
    """
    device = model_input_device(model)
    ids, mask = left_pad(prompts, settings.pad_id)
    sampling = settings.sampling
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=sampling.do_sample,
        temperature=sampling.temperature if sampling.do_sample else None,
        top_p=sampling.top_p if sampling.do_sample else None,
        top_k=(sampling.top_k or 0) if sampling.do_sample else None,
        num_beams=num_beams,
        eos_token_id=settings.eos_ids,
        pad_token_id=settings.pad_id,
    )
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
        )
    return [cut_at_eos(row.tolist(), settings.eos_ids) for row in out[:, ids.shape[1]:]]


def cut_at_eos(ids: list[int], eos_ids: list[int]) -> list[int]:
    """Ids up to and including the first EOS (the rest is padding)."""
    for position, token in enumerate(ids):
        if token in eos_ids:
            return ids[: position + 1]
    return ids


def two_prompt(
    model, pref_ids, base_ids, settings: DecodeSettings, combine: CombineRule, seed: int
) -> list[list[int]]:
    generator = None
    if settings.sampling.do_sample:
        generator = torch.Generator(device=model_input_device(model)).manual_seed(seed)
    result = decode_two_prompts(
        model, pref_ids, base_ids, combine, settings.max_new_tokens, settings.eos_ids,
        settings.pad_id, settings.sampling, generator,
    )
    return result.token_ids


def run_base(model, pref_ids, base_ids, settings: DecodeSettings, seed: int):
    return generate_on(model, base_ids, settings, 1, seed)


def run_pref(model, pref_ids, base_ids, settings: DecodeSettings, seed: int):
    return generate_on(model, pref_ids, settings, 1, seed)


def run_beam(model, pref_ids, base_ids, settings: DecodeSettings, seed: int):
    return generate_on(model, pref_ids, settings, settings.num_beams, seed)


def run_la(model, pref_ids, base_ids, settings: DecodeSettings, seed: int):
    return two_prompt(model, pref_ids, base_ids, settings, la_rule(settings.reinforce_ratio), seed)


def run_amulet(model, pref_ids, base_ids, settings: DecodeSettings, seed: int):
    rule = amulet_rule(
        settings.iteration_num, settings.alpha, settings.player_lambda, settings.eta,
        settings.amulet_solver,
    )
    return two_prompt(model, pref_ids, base_ids, settings, rule, seed)


METHOD_RUNNERS: dict[str, Runner] = {
    "base": run_base,
    "pref": run_pref,
    "beam": run_beam,
    "la": run_la,
    "amulet": run_amulet,
}
