"""What the efficiency benchmark measures: the cases (a method and its setting), the workload
(encoded prompts cut into the runner's batches) and how one case decodes all of it.

Timing lives in efficiency_timing, memory in efficiency_memory, tables in efficiency_report.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from evals.errors import EvalError
from evals.threads import set_threads

SOLVERS = ("closed_form", "iterative")


@dataclass(frozen=True)
class Case:
    """One timed configuration: a registry method, or transformers' CFG ('hf_cfg')."""

    method: str
    iteration_num: int | None = None
    solver: str | None = None
    cfg_mode: str | None = None  # 'batched' or 'per_prompt'
    fixed_length: bool = False  # ignore EOS: every row decodes max_new_tokens steps
    continuous: bool = False  # one stream over all batches, a question admitted per free slot

    @property
    def key(self) -> str:
        parts = [self.method]
        if self.iteration_num is not None:
            parts += [f"T={self.iteration_num}", self.solver]
        if self.cfg_mode:
            parts.append(self.cfg_mode)
        if self.fixed_length:
            parts.append("fixed")
        if self.continuous:
            parts.append("continuous")
        return ":".join(parts)

    @property
    def setting(self) -> str:
        if self.method == "amulet":
            return f"T={self.iteration_num}, {self.solver}"
        if self.method == "hf_cfg":
            return f"guidance_scale=1+k, {self.cfg_mode}"
        return ""

    @classmethod
    def from_key(cls, key: str) -> Case:
        parts = key.split(":")
        flags = {"fixed_length": "fixed" in parts, "continuous": "continuous" in parts}
        parts = [p for p in parts if p not in ("fixed", "continuous")]
        if parts[0] == "amulet":
            return cls("amulet", int(parts[1].removeprefix("T=")), parts[2], **flags)
        if parts[0] == "hf_cfg":
            return cls("hf_cfg", cfg_mode=parts[1], **flags)
        return cls(parts[0], **flags)


@dataclass
class Workload:
    """Encoded prompts cut into the batches the runner would decode (sorted by length)."""

    pref_ids: list[list[int]]
    base_ids: list[list[int]]
    batches: list[list[int]]
    eos_ids: list[int]
    pad_id: int
    settings: object = field(repr=False)  # DecodeSettings


def method_cases(args) -> list[Case]:
    cases = [Case("base"), Case("pref")]
    if "beam" not in args.skip:
        cases.append(Case("beam"))
    cases.append(Case("la"))
    cases += [Case("amulet", t, s) for s in SOLVERS for t in args.amulet_T]
    reference = Case("amulet", args.iteration_num, "closed_form")
    if reference not in cases:
        cases.append(reference)
    if "cfg" not in args.skip:
        cases += [Case("hf_cfg", cfg_mode=m) for m in args.cfg_modes]
    return cases


def cost_cases(args) -> list[Case]:
    return [Case("amulet", t, s, fixed_length=True) for s in SOLVERS for t in args.cost_T]


def say(message: str) -> None:
    """Progress goes to stderr, so stdout carries the report alone."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- loading and workloads


def load(args):
    """Tokenizer, model and a short description of both; the model stays in eval mode."""
    from DecodingMethodsModels.models.loading import (
        check_fetchable,
        load_model,
        load_tokenizer,
        resolve_device,
        resolve_model,
    )

    set_threads(args.threads)
    source = resolve_model(args.probe_model or args.model_name)
    check_fetchable(source)
    device = resolve_device(args.device)
    tokenizer = load_tokenizer(source)
    model = load_model(source, device, args.dtype)
    return tokenizer, model, source, device


def build_workload(args, tokenizer, model, questions) -> Workload:
    from DecodingMethodsModels.models.loading import eos_token_ids, pad_token_id
    from DecodingMethodsModels.pipeline.methods import DecodeSettings
    from DecodingMethodsModels.pipeline.runner import batches_of
    from DecodingMethodsModels.prompts.amulet import (
        encode_prompt,
        preference_sentence,
        template_accepts_system,
    )

    system_role = template_accepts_system(tokenizer)
    preference = preference_sentence(args.pref_name)
    pref_ids = [encode_prompt(tokenizer, q.question, preference, system_role) for q in questions]
    base_ids = [encode_prompt(tokenizer, q.question, "", system_role) for q in questions]
    context = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(p) for p in pref_ids + base_ids)
    if context and longest + args.max_new_tokens > context:
        raise EvalError(f"a prompt of {longest} tokens + {args.max_new_tokens} new tokens exceeds "
                        f"the model's context {context}; lower --max_new_tokens or --limit")
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = pad_token_id(tokenizer, eos_ids)
    settings = DecodeSettings(
        max_new_tokens=args.max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
        num_beams=args.num_beams, reinforce_ratio=args.reinforce_ratio,
        iteration_num=args.iteration_num, alpha=args.alpha, player_lambda=args.player_lambda,
        eta=args.eta,
    )
    batches = batches_of(tuple(questions), [len(p) for p in pref_ids], args.batch_size)
    return Workload(pref_ids, base_ids, batches, eos_ids, pad_id, settings)


def questions_of(args, limit: int):
    from DecodingMethodsModels.pipeline.eval_data import load_dataset

    return load_dataset(Path(args.data_dir), args.eval_data, limit).questions


# ---------------------------------------------------------------- running one case


def case_settings(case: Case, settings):
    """The workload's DecodeSettings with this case's Amulet T and solver."""
    if case.method != "amulet":
        return settings
    return replace(settings, iteration_num=case.iteration_num, amulet_solver=case.solver)


def case_runner(case: Case, args, model) -> Callable:
    """A function (pref_ids, base_ids, settings) -> generated ids per question."""
    from DecodingMethodsModels.pipeline.methods import METHOD_RUNNERS
    from DecodingMethodsModels.rules.combine import amulet_ratio

    if case.method == "hf_cfg":
        scale = 1.0 + amulet_ratio(args.iteration_num, args.alpha, args.player_lambda, args.eta)
        if case.cfg_mode == "per_prompt":
            def per_prompt(pref, base, settings):
                pairs = zip(pref, base, strict=True)
                return [hf_cfg(model, [p], [b], settings, scale)[0] for p, b in pairs]
            return per_prompt
        return lambda pref, base, settings: hf_cfg(model, pref, base, settings, scale)
    runner = METHOD_RUNNERS[case.method]
    if case.method == "amulet":
        return lambda pref, base, settings: runner(model, pref, base,
                                                   case_settings(case, settings), 0)
    return lambda pref, base, settings: runner(model, pref, base, settings, 0)


def hf_cfg(model, pref_ids, base_ids, settings, scale: float) -> list[list[int]]:
    """transformers' classifier-free guidance, greedy, negative prompt = the base prompt.

    transformers runs the negative prompt as a second forward per step with its own cache;
    `negative_prompt_ids` must have batch 1 or the batch of the inputs, with its own mask.
    """
    import torch
    from transformers import GenerationConfig

    from DecodingMethodsModels.engines.core import left_pad, model_input_device
    from DecodingMethodsModels.pipeline.methods import cut_at_eos

    device = model_input_device(model)
    ids, mask = left_pad(pref_ids, settings.pad_id)
    negative, negative_mask = left_pad(base_ids, settings.pad_id)
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens, do_sample=False, num_beams=1,
        guidance_scale=scale, eos_token_id=settings.eos_ids, pad_token_id=settings.pad_id,
    )
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device),
            negative_prompt_ids=negative.to(device),
            negative_prompt_attention_mask=negative_mask.to(device), generation_config=config,
        )
    return [cut_at_eos(row.tolist(), settings.eos_ids) for row in out[:, ids.shape[1]:]]


def run_case(case: Case, args, model, work: Workload, max_new_tokens: int | None = None,
             batches: list[list[int]] | None = None) -> list[list[int]]:
    """Decode every batch of `work`; returns generated ids per question, in question order."""
    settings = work.settings
    if max_new_tokens is not None:
        settings = replace(settings, max_new_tokens=max_new_tokens)
    if case.fixed_length:
        settings = replace(settings, eos_ids=[-1])  # no token id is negative: never stops
    if case.continuous:
        return stream_case(case, args, model, work, settings, batches or work.batches)
    decode = case_runner(case, args, model)
    outputs: dict[int, list[int]] = {}
    for rows in batches or work.batches:
        got = decode([work.pref_ids[i] for i in rows], [work.base_ids[i] for i in rows], settings)
        outputs.update(zip(rows, got, strict=True))
    return [outputs[i] for i in sorted(outputs)]


def stream_case(case: Case, args, model, work: Workload, settings,
                batches: list[list[int]]) -> list[list[int]]:
    """The questions of `batches`, in their order, as one continuous-batching stream of at most
    --batch_size questions in flight (what the runner does for greedy la and amulet)."""
    from DecodingMethodsModels.pipeline.methods import stream_method

    order = [i for rows in batches for i in rows]
    found = dict(stream_method(case.method, model, [work.pref_ids[i] for i in order],
                               [work.base_ids[i] for i in order], case_settings(case, settings),
                               args.batch_size))
    outputs = {order[k]: ids for k, ids in found.items()}
    return [outputs[i] for i in sorted(outputs)]
