"""Shared by the vLLM tests: skip (or, with REQUIRE_VLLM=1 as in CI, fail) without vLLM; tiny
sharpened models vLLM can run; decoding a method on both backends."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

MISSING = importlib.util.find_spec("vllm") is None
# Engines live until the process ends: one garbage-collected in-process engine tears down
# vLLM's process-wide parallel groups under the others.
ENGINES: list = []


def kept(engine):
    ENGINES.append(engine)
    return engine


def require_vllm() -> None:
    """Call at module level: skips the module without vLLM, fails it under REQUIRE_VLLM=1."""
    if not MISSING:
        return
    if os.environ.get("REQUIRE_VLLM") == "1":
        raise RuntimeError("REQUIRE_VLLM=1 but vLLM is not importable: pip install -r "
                           "requirements-vllm.txt, then uninstall torchvision torchaudio "
                           "torchcodec (see requirements-vllm.txt)")
    pytest.skip("vLLM is not installed (pip install -r requirements-vllm.txt runs these)",
                allow_module_level=True)


def build_sharp_model(family: str, tokenizer, out_dir: Path, seed: int = 0, heads: int = 2,
                      kv_heads: int = 1, nan_ids: tuple[int, ...] = ()) -> Path:
    """A tiny random `family` ("llama", "qwen2") model with head size 64 (vLLM's CPU attention
    needs a supported head size) and a sharpened LM head, so that greedy choices are decided
    by clear margins, not by rounding; saved with `tokenizer`, float32. `heads` and
    `kv_heads` divisible by a tensor-parallel size run split; `nan_ids` poisons those tokens'
    embeddings (a prompt holding one gives NaN logits, the others are untouched)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    config = (LlamaConfig if family == "llama" else Qwen2Config)(
        vocab_size=len(tokenizer), hidden_size=64 * heads, intermediate_size=128 * heads,
        num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
        model.model.embed_tokens.weight[list(nan_ids)] = float("nan")
    model.generation_config.eos_token_id = [2]
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def prompts(tokenizer, questions: list[str], preference: str = "creative"):
    from DecodingMethodsModels.prompts.amulet import (
        encode_prompt,
        preference_sentence,
        template_accepts_system,
    )

    system_role = template_accepts_system(tokenizer)
    pref = [encode_prompt(tokenizer, q, preference_sentence(preference), system_role)
            for q in questions]
    base = [encode_prompt(tokenizer, q, "", system_role) for q in questions]
    return pref, base


def vllm_tokens(driver, method, pref, base, settings, seeds=None, guided=None):
    """Generated ids per question on vLLM, in question order."""
    from DecodingMethodsModels.backends.vllm_backend import VllmRequests

    seeds = seeds or [0] * len(pref)
    jobs = VllmRequests(settings).jobs(method, pref, base, seeds, guided)
    found = dict(driver.run(jobs))
    return [found[k] for k in range(len(pref))]


def hf_tokens(model, method, pref, base, settings, guided=None):
    """The hf backend's ids per question (greedy), as the CLI's runners decode them."""
    from DecodingMethodsModels.engines.reward_guided import GuidedSettings, decode_pad_implicit
    from DecodingMethodsModels.pipeline.methods import METHOD_RUNNERS

    if method == "pad":
        run = GuidedSettings.from_run(guided, settings.max_new_tokens, settings.eos_ids,
                                      settings.pad_id)
        return decode_pad_implicit(model, base, pref, run, None).token_ids
    return METHOD_RUNNERS[method](model, pref, base, settings, 0)
