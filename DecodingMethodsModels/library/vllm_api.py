"""`personalise(..., backend="vllm")`: the library call on vLLM. The model is the loaded
transformers model (saved once, float32, with its tokenizer, to a temporary folder vLLM reads)
or the path of a Hugging Face folder; one engine per model for the process."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from DecodingMethodsModels.errors import UserError

_ENGINES: dict[object, object] = {}  # model (or folder) -> VllmModel


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


def engine_for(model, tokenizer, max_num_seqs: int):
    from DecodingMethodsModels.backends.vllm_driver import EngineSettings, build_engine
    from DecodingMethodsModels.backends.vllm_model import VllmModel

    key = str(model) if isinstance(model, str | Path) else id(model)
    if key in _ENGINES:
        return _ENGINES[key]
    if isinstance(model, str | Path):
        from transformers import AutoConfig, GenerationConfig

        folder = str(model)
        hf_config = AutoConfig.from_pretrained(folder)
        try:
            generation_config = GenerationConfig.from_pretrained(folder)
        except OSError:
            generation_config = GenerationConfig.from_model_config(hf_config)
    else:
        folder = str(Path(tempfile.mkdtemp(prefix="dmm-vllm-")) / "model")
        save_float32(model, folder)
        tokenizer.save_pretrained(folder)
        hf_config, generation_config = model.config, model.generation_config
    length = getattr(hf_config, "max_position_embeddings", None) or 2048
    settings = EngineSettings(model=folder, max_model_len=min(length, 4096),
                              max_num_seqs=max_num_seqs)
    engine = VllmModel(build_engine(settings), settings, hf_config, generation_config,
                       "float32")
    _ENGINES[key] = engine
    return engine


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
    vllm_model = engine_for(model, tokenizer, max_num_seqs)
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
