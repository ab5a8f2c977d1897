"""The methods as a registry of runners with one signature.

A runner takes a model, the preference and base prompt ids of a batch and the decode
settings, and returns the generated ids per question (with the ending EOS when there is one).
base, pref and beam are `model.generate` calls; la, amulet and costeer go through the prompt-rows
engine (engines/prompt_rows.py), each with an engine configuration (`engine_configuration`:
which model reads which prompts, and the rule that combines their log-probs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from DecodingMethodsModels.engines.core import NonFiniteScoresError, left_pad, model_input_device
from DecodingMethodsModels.engines.prompt_rows import (
    Reader,
    decode_prompt_rows,
    stream_prompt_rows,
)
from DecodingMethodsModels.rules.combine import CombineRule, amulet_rule, la_rule
from DecodingMethodsModels.rules.costeer import costeer_rule, on_one_model
from DecodingMethodsModels.rules.penalties import Penalties, apply_penalties
from DecodingMethodsModels.rules.sampling import SamplingSettings, unusable_rows, warp_scores


@dataclass(frozen=True)
class CoSteerSettings:
    """CoSteer's hyperparameters (rules/costeer.py) and its small model: `slm` None is the
    decoding model itself (the LLM and SLM then share the plain prompt's row)."""

    iterations: int = 20
    alpha: float = 2.0
    beta: float = 1.0
    player_lambda: float = 2.0
    eta: float = 10.0
    solver: str = "closed_form"
    slm: object = None


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
    penalties: Penalties = field(default_factory=Penalties)
    costeer: CoSteerSettings = field(default_factory=CoSteerSettings)


Runner = Callable[..., list[list[int]]]


def generate_on(
    model, prompts: list[list[int]], settings: DecodeSettings, num_beams: int, seed: int
) -> list[list[int]]:
    """`model.generate` on left-padded prompts, with an explicit mask and all EOS ids.

    The generation config is built from our settings alone and the checkpoint's own generation
    config is set aside for the call (`neutral_generation_config`), so a model's defaults
    (temperature, repetition penalty, ...) never reach one method and not another. Scores go
    through `ScoreGuard`: log-softmax in fp32, the shared penalties, a NaN check.
    """
    device = model_input_device(model)
    ids, mask = left_pad(prompts, settings.pad_id)
    padding = [ids.shape[1] - len(p) for p in prompts]
    sampling = settings.sampling
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=sampling.do_sample,
        num_beams=num_beams,
        eos_token_id=settings.eos_ids,
        pad_token_id=settings.pad_id,
    )
    if sampling.do_sample:  # ScoreGuard warps, after the penalties: transformers must not
        config.update(temperature=1.0, top_p=1.0, top_k=0)
    guard = ScoreGuard(padding, num_beams, settings.penalties, sampling)
    torch.manual_seed(seed)
    with torch.inference_mode(), neutral_generation_config(model):
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
            logits_processor=LogitsProcessorList([guard]),
        )
    return [cut_at_eos(row.tolist(), settings.eos_ids) for row in out[:, ids.shape[1]:]]


# Fields of a generation config that name tokens or lengths we always set ourselves, or that
# change no token: not reported as checkpoint settings set aside.
_NOT_DECODING = {
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "max_length",
    "max_new_tokens", "use_cache", "cache_implementation", "transformers_version",
    "_from_model_config", "return_dict_in_generate", "output_scores", "output_logits",
    "output_attentions", "output_hidden_states",
}


def checkpoint_generation_settings(model) -> dict:
    """The model's own generation-config fields that differ from transformers' defaults and
    could change tokens (sampling defaults, penalties, banned or suppressed tokens, ...)."""
    own = model.generation_config.to_diff_dict()
    return {k: v for k, v in own.items() if k not in _NOT_DECODING}


@contextmanager
def neutral_generation_config(model) -> Iterator[None]:
    """Within the block, `model.generation_config` is transformers' neutral default.

    `generate` fills every field a passed GenerationConfig leaves unset from the model's own
    generation config (a checkpoint's repetition penalty, n-gram ban, suppressed tokens...),
    and the two-prompt engine never sees those: set aside, they reach no method.
    """
    own = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = own


class ScoreGuard(LogitsProcessor):
    """`model.generate`'s scores as the engine treats its own: fp32 log-softmax, the shared
    penalties (contexts without left padding), a check that every row is usable, and, when
    sampling, the engine's temperature / top-k / top-p warping (transformers' own warpers are
    switched off so that they cannot run before the penalties).

    Log-softmax changes no argmax, no softmax and no beam score, so without penalties the
    tokens are those of plain `generate`. `padding[i]` is question i's left padding; with
    beam search, rows i * num_beams ... (i + 1) * num_beams - 1 belong to question i.
    """

    def __init__(self, padding: list[int], num_beams: int, penalties: Penalties,
                 sampling: SamplingSettings):
        self.padding = padding
        self.num_beams = num_beams
        self.penalties = penalties
        self.sampling = sampling

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        scores = torch.log_softmax(scores.float(), dim=-1)  # (rows, V) fp32
        if self.penalties.active:
            contexts = [
                row[self.padding[i // self.num_beams]:].tolist()
                for i, row in enumerate(input_ids)
            ]
            scores = apply_penalties(scores, contexts, self.penalties)
        bad = unusable_rows(scores)
        if bad.any():
            rows = bad.nonzero().flatten().tolist()
            raise NonFiniteScoresError(f"NaN or no finite score for batch rows {rows}")
        if self.sampling.do_sample:
            scores = warp_scores(scores, self.sampling)
        return scores


def cut_at_eos(ids: list[int], eos_ids: list[int]) -> list[int]:
    """Ids up to and including the first EOS (the rest is padding)."""
    for position, token in enumerate(ids):
        if token in eos_ids:
            return ids[: position + 1]
    return ids


def two_prompt(
    model, pref_ids, base_ids, settings: DecodeSettings, combine: CombineRule, seed: int,
    readers: tuple[Reader, ...] | None = None,
) -> list[list[int]]:
    """One batch through the prompt-rows engine: `readers` (default: `model` on both prompts)
    and `combine` are a method's engine configuration."""
    readers = readers or (Reader(model, ("pref", "base")),)
    generator = None
    if settings.sampling.do_sample:
        generator = torch.Generator(device=model_input_device(model)).manual_seed(seed)
    result = decode_prompt_rows(
        readers, {"pref": pref_ids, "base": base_ids}, combine, settings.max_new_tokens,
        settings.eos_ids, settings.pad_id, settings.sampling, generator,
        penalties=settings.penalties,
    )
    return result.token_ids


def run_base(model, pref_ids, base_ids, settings: DecodeSettings, seed: int):
    return generate_on(model, base_ids, settings, 1, seed)


def run_pref(model, pref_ids, base_ids, settings: DecodeSettings, seed: int):
    return generate_on(model, pref_ids, settings, 1, seed)


def run_beam(model, pref_ids, base_ids, settings: DecodeSettings, seed: int):
    return generate_on(model, pref_ids, settings, settings.num_beams, seed)


def combine_rule(method: str, settings: DecodeSettings) -> CombineRule:
    """The two-prompt rule of `method` ("la" or "amulet") under `settings`."""
    if method == "la":
        return la_rule(settings.reinforce_ratio)
    return amulet_rule(settings.iteration_num, settings.alpha, settings.player_lambda,
                       settings.eta, settings.amulet_solver)


def engine_configuration(method: str, model, settings: DecodeSettings
                         ) -> tuple[tuple[Reader, ...], CombineRule]:
    """(readers, combine) of a prompt-rows method: which model reads which prompts, and the
    rule over their log-probs. CoSteer: the LLM on the plain (base) prompt, the SLM on the
    personalised (pref) and plain ones; with the SLM the LLM itself, the plain row is shared."""
    if method != "costeer":
        return (Reader(model, ("pref", "base")),), combine_rule(method, settings)
    c = settings.costeer
    rule = costeer_rule(c.iterations, c.alpha, c.beta, c.player_lambda, c.eta, c.solver)
    if c.slm is None or c.slm is model:
        return (Reader(model, ("pref", "base")),), on_one_model(rule)
    return (Reader(model, ("base",)), Reader(c.slm, ("pref", "base"))), rule


def run_prompt_rows(method: str):
    """The runner of a prompt-rows method."""
    def run(model, pref_ids, base_ids, settings: DecodeSettings, seed: int):
        readers, combine = engine_configuration(method, model, settings)
        return two_prompt(model, pref_ids, base_ids, settings, combine, seed, readers)
    run.__name__ = f"run_{method}"
    return run


run_la = run_prompt_rows("la")
run_amulet = run_prompt_rows("amulet")
run_costeer = run_prompt_rows("costeer")

# Methods that can decode a whole list of questions with continuous batching (greedy only: a
# sampled token would depend on which questions share the random stream).
STREAMING_METHODS = ("la", "amulet", "costeer")


def stream_method(method: str, model, pref_ids, base_ids, settings: DecodeSettings,
                  batch_size: int) -> Iterator[tuple[int, list[int]]]:
    """(position in the lists, generated ids) of every question as it finishes."""
    if method not in STREAMING_METHODS or settings.sampling.do_sample:
        raise ValueError(f"{method} with these settings cannot stream")
    readers, combine = engine_configuration(method, model, settings)
    return stream_prompt_rows(
        readers, {"pref": pref_ids, "base": base_ids}, combine, settings.max_new_tokens,
        settings.eos_ids, settings.pad_id, batch_size, penalties=settings.penalties,
    )


METHOD_RUNNERS: dict[str, Runner] = {
    "base": run_base,
    "pref": run_pref,
    "beam": run_beam,
    "la": run_la,
    "amulet": run_amulet,
    "costeer": run_costeer,
}
