"""The Python API around the two-prompt engine: `personalise` for a list of questions (also
implicit PAD, by the reward-guided engine), and the engine as
`model.generate(custom_generate=amulet_generate | la_generate, ...)`.

Both run engine.decode_two_prompts (one stacked forward for both prompts per step) with the
rules of combine.py; the logits processors of processors.py are the other way in, for
whatever `generate` itself does (beam search, streamers, any stopping criteria).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import (
    EosTokenCriteria,
    MaxLengthCriteria,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.utils import GenerateDecoderOnlyOutput

from DecodingMethodsModels.engines.core import model_input_device
from DecodingMethodsModels.engines.prompt_rows import decode_prompt_rows, decode_two_prompts
from DecodingMethodsModels.engines.reward_guided import GuidedSettings, decode_pad_implicit
from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.library.guided_processors import PAD_WEIGHT, TOPK
from DecodingMethodsModels.library.processors import PAPER
from DecodingMethodsModels.models.loading import eos_token_ids, pad_token_id
from DecodingMethodsModels.pipeline.decode import decode_response
from DecodingMethodsModels.pipeline.methods import (
    CoSteerSettings,
    DecodeSettings,
    engine_configuration,
)
from DecodingMethodsModels.prompts.amulet import (
    PREFERENCE_NAMES,
    encode_prompt,
    preference_sentence,
    template_accepts_system,
)
from DecodingMethodsModels.prompts.costeer import costeer_sentence, encode_costeer_prompt
from DecodingMethodsModels.rules.combine import CombineRule, amulet_rule, la_rule
from DecodingMethodsModels.rules.costeer import costeer_ratio
from DecodingMethodsModels.rules.penalties import Penalties
from DecodingMethodsModels.rules.sampling import SamplingSettings

# Method name -> the settings its rule takes, with the paper's values.
METHOD_SETTINGS: dict[str, dict] = {
    "la": {"ratio": PAPER.reinforce_ratio},
    "amulet": {"iterations": PAPER.iteration_num, "alpha": PAPER.alpha,
               "player_lambda": PAPER.player_lambda, "eta": PAPER.eta,
               "solver": PAPER.amulet_solver},
    "pad_implicit": {"weight": PAD_WEIGHT, "topk": TOPK},
    "costeer": {"iterations": PAPER.costeer.iterations, "alpha": PAPER.costeer.alpha,
                "beta": PAPER.costeer.beta, "player_lambda": PAPER.costeer.player_lambda,
                "eta": PAPER.costeer.eta, "solver": PAPER.costeer.solver},
}


def method_settings(method: str, **settings) -> dict:
    """`settings` of `method` over its defaults; a UserError names an unknown method or key."""
    if method not in METHOD_SETTINGS:
        raise UserError(f"unknown method {method!r}; the library offers {sorted(METHOD_SETTINGS)}")
    unknown = sorted(set(settings) - set(METHOD_SETTINGS[method]))
    if unknown:
        raise UserError(f"{method} takes no setting {unknown}; it takes "
                        f"{sorted(METHOD_SETTINGS[method])}")
    return {**METHOD_SETTINGS[method], **settings}


def method_rule(method: str, **settings) -> CombineRule:
    """The combine rule of `method` ("la" or "amulet") with `settings` over the paper's values."""
    values = method_settings(method, **settings)
    if method == "la":
        return la_rule(values["ratio"])
    if method == "amulet":
        return amulet_rule(values["iterations"], values["alpha"], values["player_lambda"],
                           values["eta"], values["solver"])
    raise UserError(f"{method} is not a combination of two prompts' log-probs")


def preference_text(preference: str, prompt_style: str = "chat") -> str:
    """The preference sentence: a named preference's (the project's, or CoSteer's with
    `prompt_style="costeer"`), or free text as is."""
    if preference in PREFERENCE_NAMES:
        if prompt_style == "costeer":
            return costeer_sentence(preference)
        return preference_sentence(preference)
    if not preference.strip():
        raise UserError(f"empty preference; give one of {PREFERENCE_NAMES} or a sentence")
    return preference


def personalise(
    model,
    tokenizer,
    questions: Sequence[str],
    preference: str = "creative",
    method: str = "amulet",
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    seed: int = 0,
    backend: str = "hf",
    slm=None,
    prompt_style: str = "chat",
    **settings,
) -> list[str]:
    """Answers to `questions` personalised for `preference`, one string per question.

    `preference` is one of the paper's names ("creative", "concise", ...) or any sentence for
    the system prompt. `method` "amulet" (settings iterations, alpha, player_lambda, eta,
    solver), "la" (ratio) or "pad_implicit" (weight, topk: PAD with the model itself on the
    preference prompt as PersRM, reward_guided.decode_pad_implicit; sampling draws from
    softmax(score / temperature) over the k candidates, without top_k/top_p); unset settings
    take the paper's values. "costeer" (settings iterations, alpha, beta, player_lambda, eta,
    solver): `slm`, a small model with the same tokenizer, reads the preference, `model` only
    the plain prompt (`slm` None: `model` steers itself). Prompts are the CLI's
    (prompts.encode_prompt, with and without the preference), or with `prompt_style="costeer"`
    CoSteer's (prompts/costeer.py); questions go through the engine in batches of
    `batch_size`; decoding stops at any of the model's EOS ids.

    `backend="vllm"` decodes on vLLM (backends/README.md): `model` is then the loaded model
    (saved once to a temporary float32 folder) or a Hugging Face folder's path; greedy answers
    are the hf backend's, a sampled answer depends on `seed` and its question's position only.
    """
    if isinstance(questions, str):
        raise UserError("questions must be a list of strings, not one string")
    values = method_settings(method, **settings)
    guided = method == "pad_implicit"
    if guided and (top_k is not None or top_p != 1.0):
        raise UserError("pad_implicit samples from its k candidates: it takes no top_k or top_p")
    if slm is not None and method != "costeer":
        raise UserError(f"slm= is for method='costeer', not {method!r}")
    if prompt_style not in ("chat", "costeer"):
        raise UserError(f"unknown prompt_style {prompt_style!r}; use 'chat' or 'costeer'")
    sentence = preference_text(preference, prompt_style)
    system_role = template_accepts_system(tokenizer)

    def encode(question: str, text: str) -> list[int]:
        if prompt_style == "costeer":
            return encode_costeer_prompt(tokenizer, question, text, system_role)
        return encode_prompt(tokenizer, question, text, system_role)

    if backend != "hf":
        if method == "costeer":  # its own SLM: LA with ratio c_T - 1 (rules/costeer.py)
            if slm is not None and slm is not model:
                raise UserError("backend='vllm' runs costeer with the model as its own SLM; "
                                "pass no slm=, or use backend='hf'")
            ratio = costeer_ratio(values["iterations"], values["alpha"], values["beta"],
                                  values["player_lambda"], values["eta"])
            method, values = "la", {"ratio": ratio - 1.0}
        return _personalise_vllm(model, tokenizer, questions, encode, method, values, backend,
                                 max_new_tokens, do_sample, temperature, top_k, top_p, seed,
                                 sentence)
    if not guided:
        steering = CoSteerSettings(**values, slm=slm) if method == "costeer" else None
        readers, combine = (engine_configuration(
            "costeer", model, DecodeSettings(1, [], 0, costeer=steering)) if steering else
            ((), method_rule(method, **settings)))
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = pad_token_id(tokenizer, eos_ids)
    sampling = SamplingSettings(do_sample, temperature, top_k, top_p)
    generator = None
    if do_sample:
        generator = torch.Generator(device=model_input_device(model)).manual_seed(seed)
    if guided:  # checked before the first batch
        run = GuidedSettings(weight=values["weight"], max_new_tokens=max_new_tokens,
                             eos_ids=eos_ids, pad_id=pad_id, topk=values["topk"],
                             mode="topk" if do_sample else "greedy", sample_temp=temperature)
    texts = []
    for start in range(0, len(questions), batch_size):
        batch = questions[start: start + batch_size]
        pref = [encode(q, sentence) for q in batch]
        base = [encode(q, "") for q in batch]
        if guided:
            result = decode_pad_implicit(model, base, pref, run, generator)
        elif readers:
            result = decode_prompt_rows(readers, {"pref": pref, "base": base}, combine,
                                        max_new_tokens, eos_ids, pad_id, sampling, generator)
        else:
            result = decode_two_prompts(model, pref, base, combine, max_new_tokens, eos_ids,
                                        pad_id, sampling, generator)
        texts += [decode_response(tokenizer, ids, eos_ids) for ids in result.token_ids]
    return texts


def _personalise_vllm(model, tokenizer, questions, encode, method, values, backend,
                      max_new_tokens, do_sample, temperature, top_k, top_p, seed, sentence):
    if backend != "vllm":
        raise UserError(f"unknown backend {backend!r}; use 'hf' or 'vllm'")
    from DecodingMethodsModels.backends import vllm_refusal_of_library

    reason = vllm_refusal_of_library()
    if reason is not None:
        raise UserError(reason)
    from DecodingMethodsModels.library.vllm_api import personalise_vllm

    pref = [encode(q, sentence) for q in questions]
    base = [encode(q, "") for q in questions]
    sampling = SamplingSettings(do_sample, temperature, top_k, top_p)
    name = "pad" if method == "pad_implicit" else method
    ids, eos_ids = personalise_vllm(model, tokenizer, pref, base, name, values,
                                    max_new_tokens=max_new_tokens, sampling=sampling, seed=seed)
    return [decode_response(tokenizer, row, eos_ids) for row in ids]


# ----- the engine as generate(custom_generate=...) --------------------------------------------

_SAMPLING_WARPERS = (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)
_PENALTIES = (RepetitionPenaltyLogitsProcessor, NoRepeatNGramLogitsProcessor)


def _unpadded(ids: torch.Tensor, mask: torch.Tensor | None) -> list[list[int]]:
    """Rows of left-padded ids without their padding."""
    if mask is None:
        return ids.tolist()
    return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]


def _engine_options(logits_processor, stopping_criteria, config) -> tuple:
    """SamplingSettings and Penalties from a prepared `generate` call, or a ValueError naming
    what the engine cannot do (it owns the loop: other processors and criteria never run)."""
    if config.num_beams > 1:
        raise ValueError("the two-prompt engine does not do beam search: pass AmuletProcessor "
                         "or LinearAlignmentProcessor in logits_processor instead")
    for processor in logits_processor:
        if not isinstance(processor, _SAMPLING_WARPERS + _PENALTIES):
            raise ValueError(
                f"custom_generate runs the two-prompt engine, which cannot apply "
                f"{type(processor).__name__}; use the logits processors of this package instead")
    for criterion in stopping_criteria:
        if not isinstance(criterion, (MaxLengthCriteria, EosTokenCriteria)):
            raise ValueError(
                f"custom_generate runs the two-prompt engine, which stops at max_new_tokens and "
                f"EOS only, not at {type(criterion).__name__}")
    sampling = SamplingSettings(bool(config.do_sample), config.temperature or 1.0,
                                config.top_k or None, config.top_p or 1.0)
    penalties = Penalties(config.repetition_penalty or 1.0, config.no_repeat_ngram_size or 0)
    return sampling, penalties


def _ids_list(value) -> list[int]:
    if value is None:
        return []
    if torch.is_tensor(value):
        return value.flatten().tolist()
    return [value] if isinstance(value, int) else list(value)


def _engine_generate(model, input_ids, logits_processor, stopping_criteria, generation_config,
                     extra_ids, extra_attention_mask, decode, model_kwargs: dict,
                     extra: str = "base"):
    """Decode `generate`'s prepared call with an engine; returns what `generate` would.

    `extra_ids` (with `extra_attention_mask`) are the second prompts, named `extra` ("base" or
    "pref") in messages; `decode(own, extra, max_new_tokens, eos_ids, pad_id, sampling,
    penalties)` runs the engine on unpadded id lists and returns its DecodeResult.
    """
    if extra_ids is None:
        raise ValueError(f"pass {extra}_ids (the {extra} prompts, with {extra}_attention_mask) "
                         "to generate")
    sampling, penalties = _engine_options(logits_processor, stopping_criteria, generation_config)
    own = _unpadded(input_ids, model_kwargs.get("attention_mask"))
    second = (_unpadded(extra_ids, extra_attention_mask) if torch.is_tensor(extra_ids)
              else [list(row) for row in extra_ids])
    if len(own) % len(second):
        raise ValueError(f"{len(own)} prompts for {len(second)} {extra} prompts: give one "
                         f"{extra} prompt per prompt")
    copies = len(own) // len(second)  # num_return_sequences
    if any(own[i] != own[i - i % copies] for i in range(len(own))):
        raise ValueError(f"{len(own)} prompts for {len(second)} {extra} prompts, and the prompts "
                         f"are not {copies} copies of each question: give one {extra} prompt "
                         "per prompt")
    second = [row for row in second for _ in range(copies)]
    eos_ids = _ids_list(generation_config.eos_token_id)
    pad = _ids_list(generation_config.pad_token_id)
    pad_id = pad[0] if pad else eos_ids[0]
    max_new_tokens = generation_config.max_length - input_ids.shape[1]
    result = decode(own, second, max_new_tokens, eos_ids, pad_id, sampling, penalties)
    width = max(len(row) for row in result.token_ids)
    new = torch.full((len(own), width), pad_id, dtype=torch.long)
    for i, row in enumerate(result.token_ids):
        new[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    sequences = torch.cat([input_ids, new.to(input_ids.device)], dim=1)
    if generation_config.return_dict_in_generate:
        return GenerateDecoderOnlyOutput(sequences=sequences)
    return sequences


def _two_prompt_decode(model, rule: CombineRule):
    def decode(pref, base, max_new_tokens, eos_ids, pad_id, sampling, penalties):
        return decode_two_prompts(model, pref, base, rule, max_new_tokens, eos_ids, pad_id,
                                  sampling, None, penalties=penalties)
    return decode


def amulet_generate(model, input_ids, logits_processor, stopping_criteria, generation_config,
                    base_ids=None, base_attention_mask=None,
                    iterations: int = PAPER.iteration_num, alpha: float = PAPER.alpha,
                    player_lambda: float = PAPER.player_lambda, eta: float = PAPER.eta,
                    solver: str = PAPER.amulet_solver, **model_kwargs) -> torch.Tensor:
    """Amulet by the stacked engine, for `model.generate(custom_generate=amulet_generate, ...)`.

    Call `model.generate(pref_ids, attention_mask=..., custom_generate=amulet_generate,
    base_ids=..., base_attention_mask=..., max_new_tokens=..., [iterations=..., alpha=...,
    player_lambda=..., eta=..., solver=...])`; `generate` hands the extra keywords to this
    function. Greedy or sampling (temperature, top_k, top_p, under torch.manual_seed),
    repetition_penalty and no_repeat_ngram_size (on the combined scores, as the CLI). As in any
    `generate` call, what the call leaves unset comes from the checkpoint's generation config
    (Qwen2-7B-Instruct's samples with temperature 0.7, top_k 20, top_p 0.8 and a repetition
    penalty of 1.05): for the greedy engine without penalties on such a checkpoint call
    `generate(..., do_sample=False, repetition_penalty=1.0)`. No beam search, other processors
    or stopping criteria (the engine owns the loop: a ValueError says so), and a streamer passed
    to `generate` receives the prompt only.
    """
    rule = amulet_rule(iterations, alpha, player_lambda, eta, solver)
    return _engine_generate(model, input_ids, logits_processor, stopping_criteria,
                            generation_config, base_ids, base_attention_mask,
                            _two_prompt_decode(model, rule), model_kwargs)


def la_generate(model, input_ids, logits_processor, stopping_criteria, generation_config,
                base_ids=None, base_attention_mask=None, ratio: float = PAPER.reinforce_ratio,
                **model_kwargs) -> torch.Tensor:
    """Linear Alignment by the stacked engine, for `model.generate(custom_generate=la_generate)`;
    as `amulet_generate`, with the one setting `ratio`; for the greedy engine without penalties
    on a checkpoint whose generation config samples or penalises, call
    `generate(..., do_sample=False, repetition_penalty=1.0)`."""
    return _engine_generate(model, input_ids, logits_processor, stopping_criteria,
                            generation_config, base_ids, base_attention_mask,
                            _two_prompt_decode(model, la_rule(ratio)), model_kwargs)


def pad_implicit_generate(model, input_ids, logits_processor, stopping_criteria,
                          generation_config, pref_ids=None, pref_attention_mask=None,
                          weight: float = PAD_WEIGHT, topk: int = TOPK,
                          **model_kwargs) -> torch.Tensor:
    """Implicit PAD by the reward-guided engine (reward_guided.decode_pad_implicit), for
    `model.generate(base_ids, attention_mask=..., custom_generate=pad_implicit_generate,
    pref_ids=..., pref_attention_mask=..., weight=..., topk=..., max_new_tokens=...)`.

    `generate` reads the base prompts, the same model on `pref_ids` is the PersRM, as with
    `PadProcessor(model, pref_ids, pref_attention_mask)`. Greedy, or sampling from
    softmax(score / temperature) over the k candidates, drawn from a generator seeded from
    torch's global one (reproducible under torch.manual_seed); when sampling no top_p nor
    top_k below k (greedy ignores them, as a checkpoint's config may set them: Llama-3-Instruct
    ships top_p 0.9), no penalties, beam search, other processors or stopping criteria (a
    ValueError says so), and a streamer receives the prompt only. What the call leaves unset
    comes from the checkpoint's generation config: on one that samples or penalises
    (Qwen2-7B-Instruct) call `generate(..., do_sample=False, repetition_penalty=1.0)`.
    """
    config = generation_config
    narrowed = (config.top_p or 1.0) < 1.0 or (config.top_k and config.top_k < topk)
    if config.do_sample and narrowed:
        raise ValueError("pad_implicit_generate samples from its k candidates: it takes no "
                         "top_p and no top_k below topk")

    def decode(base, pref, max_new_tokens, eos_ids, pad_id, sampling, penalties):
        if penalties.active:
            raise ValueError("pad_implicit_generate applies no repetition penalties")
        settings = GuidedSettings(
            weight=weight, max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
            topk=topk, mode="topk" if sampling.do_sample else "greedy",
            sample_temp=sampling.temperature, ignore_eos=not eos_ids)
        generator = None
        if sampling.do_sample:
            seed = int(torch.randint(2**62, (1,)))  # from the global generator
            generator = torch.Generator(model_input_device(model)).manual_seed(seed)
        return decode_pad_implicit(model, base, pref, settings, generator)

    return _engine_generate(model, input_ids, logits_processor, stopping_criteria, config,
                            pref_ids, pref_attention_mask, decode, model_kwargs, extra="pref")
