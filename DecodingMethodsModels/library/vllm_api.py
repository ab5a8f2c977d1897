"""`personalise(..., backend="vllm")`: the library call on vLLM. The model is the loaded
transformers model (saved once, float32, with its tokenizer, to a temporary folder vLLM reads)
or the path of a Hugging Face folder; one engine per model for the process, which holds the
model (so that its id is never another's), and is rebuilt when a call needs another
max_num_seqs or longer requests. Prompts and the token budget are checked against the model's
context before anything is built, in one line as on the hf backend."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from DecodingMethodsModels.backends.vllm_engine import Knobs
from DecodingMethodsModels.errors import UserError


def save_float32(model, folder: str) -> None:
    """Save `model`'s weights in float32 where vLLM reads them. A model loaded from a GGUF file
    holds plain de-quantised tensors but is flagged quantized, which transformers refuses to
    save or cast: the flag is set aside while saving, then put back."""
    import torch

    quantizer = getattr(model, "hf_quantizer", None)
    method = str(getattr(getattr(quantizer, "quantization_config", None), "quant_method", ""))
    if quantizer is not None and "gguf" not in method.lower():
        raise UserError(f"a quantized model ({method}) cannot be handed to vLLM as a loaded "
                        "model: pass the path of its Hugging Face folder instead")
    quant_config = model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    try:
        if any(p.dtype != torch.float32 for p in model.parameters()):
            model.float()
        model.save_pretrained(folder)
    finally:
        if quantizer is not None:
            model.hf_quantizer = quantizer
        if quant_config is not None:
            model.config.quantization_config = quant_config


@dataclass
class _Cached:
    """A model's engine: the model itself is held, so its id cannot be given to another."""

    model: object
    engine: object  # VllmModel


_ENGINES: dict[object, _Cached] = {}  # id of the model, or its folder -> its engine
_RETIRED: list = []  # engines replaced by a rebuild: vLLM cannot tear one down in process
MIN_LENGTH = 2048  # an engine's tokens per request at least, so that most later calls fit
KV_FLOOR_BYTES = 256 * 2**20
LIBRARY = Knobs(kv_more="lower max_new_tokens", kv_less="free memory",
                length="lower max_new_tokens or shorten the questions",
                parallel="tensor_parallel_size")


def check_lengths(pref: list[list[int]], base: list[list[int]], max_new_tokens: int,
                  context: int | None) -> int:
    """Tokens one request needs (longest prompt + max_new_tokens); a UserError, as on the hf
    backend, when a question's prompts and the budget do not fit the model's context."""
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    needed = 0
    for k, (p, b) in enumerate(zip(pref, base, strict=True)):
        longest = max(len(p), len(b))
        if context is not None and longest + max_new_tokens > context:
            raise UserError(f"question {k} needs {longest} prompt tokens + {max_new_tokens} "
                            f"new tokens, more than the model's context of {context}; lower "
                            "max_new_tokens or shorten the question")
        needed = max(needed, longest + max_new_tokens)
    return needed


def kv_cache_bytes(hf_config, length: int, dtype_bytes: int = 4) -> int:
    """A KV cache for two requests of `length` tokens (one pair), at least KV_FLOOR_BYTES:
    2 (keys, values) x layers x KV heads x head size x bytes x tokens."""
    heads = getattr(hf_config, "num_attention_heads", 1)
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    per_token = 2 * hf_config.num_hidden_layers * kv_heads * head_dim * dtype_bytes
    return max(KV_FLOOR_BYTES, 2 * per_token * length)


def engine_for(model, tokenizer, max_num_seqs: int, needed: int | None = None):
    """The model's engine, built on first use; rebuilt when a call asks for another
    max_num_seqs or for more tokens per request than the engine was built for."""
    key = str(model) if isinstance(model, str | Path) else id(model)
    cached = _ENGINES.get(key)
    folder = None
    if cached is not None and (isinstance(model, str | Path) or cached.model is model):
        built = cached.engine.engine_settings
        if built.max_num_seqs == max_num_seqs and (needed is None
                                                   or needed <= built.max_model_len):
            return cached.engine
        folder = built.model  # the model's float32 folder, saved once
        _RETIRED.append(cached)
    engine = _build(model, tokenizer, max_num_seqs, needed, folder)
    _ENGINES[key] = _Cached(model, engine)
    return engine


def _build(model, tokenizer, max_num_seqs: int, needed: int | None, folder: str | None):
    from transformers import AutoConfig, GenerationConfig

    from DecodingMethodsModels.backends.vllm_driver import EngineSettings
    from DecodingMethodsModels.backends.vllm_engine import build_checked
    from DecodingMethodsModels.backends.vllm_model import VllmModel
    from DecodingMethodsModels.pipeline.encode import model_context

    if isinstance(model, str | Path):
        folder = str(model)
        hf_config = AutoConfig.from_pretrained(folder)
        try:
            generation_config = GenerationConfig.from_pretrained(folder)
        except OSError:
            generation_config = GenerationConfig.from_model_config(hf_config)
    else:
        if folder is None:
            folder = str(Path(tempfile.mkdtemp(prefix="dmm-vllm-")) / "model")
            save_float32(model, folder)
            tokenizer.save_pretrained(folder)
        hf_config, generation_config = model.config, model.generation_config
    context = model_context(hf_config)
    length = max(needed or 0, MIN_LENGTH)
    if context is not None:
        length = min(length, context)
    settings = EngineSettings(model=folder, max_model_len=length, max_num_seqs=max_num_seqs,
                              kv_cache_memory_bytes=kv_cache_bytes(hf_config, length))
    import torch

    engine = build_checked(settings, LIBRARY, on_cpu=not torch.cuda.is_available())
    return VllmModel(engine, settings, hf_config, generation_config, "float32")


def personalise_vllm(model, tokenizer, pref, base, method: str, values: dict, *,
                     max_new_tokens: int, sampling, seed: int, max_num_seqs: int = 16):
    """Generated ids per question for prompt ids `pref` / `base` (api.personalise's)."""
    from types import SimpleNamespace

    from DecodingMethodsModels.backends.vllm_backend import question_seed
    from DecodingMethodsModels.models.loading import eos_token_ids, pad_token_id
    from DecodingMethodsModels.pipeline.guided_config import GuidedRunConfig
    from DecodingMethodsModels.pipeline.methods import DecodeSettings

    if max_num_seqs < 2 or max_num_seqs % 2:
        raise UserError(f"max_num_seqs must be even and at least 2, got {max_num_seqs}")
    from DecodingMethodsModels.pipeline.encode import model_context

    config = model.config if not isinstance(model, str | Path) else _folder_config(model)
    needed = check_lengths(pref, base, max_new_tokens, model_context(config))
    vllm_model = engine_for(model, tokenizer, max_num_seqs, needed)
    eos = eos_token_ids(vllm_model, tokenizer)
    settings = DecodeSettings(max_new_tokens=max_new_tokens, eos_ids=eos,
                              pad_id=pad_token_id(tokenizer, eos), sampling=sampling)
    guided = None
    if method == "la":
        settings = replace(settings, reinforce_ratio=values["ratio"])
    elif method == "amulet":
        settings = replace(settings, iteration_num=values["iterations"], alpha=values["alpha"],
                           player_lambda=values["player_lambda"], eta=values["eta"],
                           amulet_solver=values["solver"])
    else:
        guided = GuidedRunConfig(values["weight"], values["topk"],
                                 "topk" if sampling.do_sample else "greedy",
                                 sampling.temperature if sampling.do_sample else None, line=0)
    run = SimpleNamespace(method=method, guided=guided)
    seeds = [question_seed(seed, i) for i in range(len(pref))]
    return vllm_model.decode(run, pref, base, settings, seeds), eos


def _folder_config(folder):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise UserError(f"{folder} is not a Hugging Face model folder vLLM can read: "
                        f"{str(err).splitlines()[0]}") from None
