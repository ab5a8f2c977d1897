"""The library inside `model.generate` on a checkpoint whose generation config is not neutral:
a tiny random Qwen2 saved with Qwen2-7B-Instruct's published `generation_config.json`
(huggingface.co/Qwen/Qwen2-7B-Instruct, file generation_config.json: do_sample true,
temperature 0.7, top_k 20, top_p 0.8, repetition_penalty 1.05, eos [151645, 151643],
bos = pad = 151643), its ids mapped to the tiny vocabulary by token name (<|im_end|>,
<|endoftext|>). Each processor's and custom_generate's docstring names the `generate` call that
gives its engine's tokens on such a checkpoint; that very call is run here, and the plain greedy
call (`do_sample=False` alone) is shown not to be enough."""

from __future__ import annotations

import ast
import json
import re

import pytest
import torch
from conftest import build_tiny_model, guided_engine_tokens, sharpened, tiny_config

from DecodingMethodsModels import (
    AmuletProcessor,
    ArgsProcessor,
    LinearAlignmentProcessor,
    PadProcessor,
    amulet_generate,
    la_generate,
    pad_implicit_generate,
)
from DecodingMethodsModels.engines.core import left_pad
from DecodingMethodsModels.engines.prompt_rows import decode_two_prompts
from DecodingMethodsModels.engines.reward_guided import GuidedSettings
from DecodingMethodsModels.models.loading import eos_token_ids
from DecodingMethodsModels.pipeline.methods import cut_at_eos
from DecodingMethodsModels.prompts.amulet import encode_prompt, preference_sentence
from DecodingMethodsModels.rules.combine import amulet_rule, la_rule

QWEN2_7B_INSTRUCT = {  # generation_config.json of Qwen/Qwen2-7B-Instruct, ids by token name
    "bos_token_id": "<|endoftext|>", "pad_token_id": "<|endoftext|>",
    "do_sample": True, "eos_token_id": ["<|im_end|>", "<|endoftext|>"],
    "repetition_penalty": 1.05, "temperature": 0.7, "top_k": 20, "top_p": 0.8,
}
QUESTIONS = ("Why is the sky blue?", "Write a haiku about the quiet hills after the rain.",
             "How do I keep basil alive on a windowsill in winter?")
STEPS, TOPK = 16, 10
LONGER = 48  # steps enough for the random model to meet tokens of its context again
WEIGHT = {"args": 1.5, "pad": 0.8, "implicit": 1.5}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory, smol_tokenizer_dir):
    """The tiny Qwen2 loaded from a folder holding Qwen2-7B-Instruct's generation config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_tiny_model("qwen2", smol_tokenizer_dir,
                              tmp_path_factory.mktemp("qwen2-config") / "tiny-qwen2", seed=7)
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def ids(value):
        return ([tokenizer.convert_tokens_to_ids(v) for v in value] if isinstance(value, list)
                else tokenizer.convert_tokens_to_ids(value) if isinstance(value, str) else value)

    config = {k: ids(v) if k.endswith("token_id") else v for k, v in QWEN2_7B_INSTRUCT.items()}
    (folder / "generation_config.json").write_text(json.dumps(config))
    model = sharpened(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32))
    assert model.generation_config.repetition_penalty == 1.05  # read from the file
    assert model.generation_config.do_sample and model.generation_config.top_p == 0.8
    return model, tokenizer


@pytest.fixture(scope="module")
def guides(qwen2):
    from transformers import AutoModelForCausalLM, LlamaForSequenceClassification

    vocab = len(qwen2[1])
    torch.manual_seed(100)
    persrm = AutoModelForCausalLM.from_config(tiny_config("llama", vocab))
    config = tiny_config("llama", vocab)
    config.num_labels = 1
    torch.manual_seed(200)
    return {"persrm": sharpened(persrm), "reward_model": sharpened(
        LlamaForSequenceClassification(config))}


@pytest.fixture(scope="module")
def prompts(qwen2):
    tokenizer = qwen2[1]
    sentence = preference_sentence("creative")
    return ([encode_prompt(tokenizer, q, sentence, True) for q in QUESTIONS],
            [encode_prompt(tokenizer, q, "", True) for q in QUESTIONS])


def call_in_docstring(obj) -> dict:
    """The keywords of the one `generate(..., k=v)` call that `obj`'s docstring names."""
    calls = set(re.findall(r"`generate\(\.\.\., ([^`]*)\)`", " ".join(obj.__doc__.split())))
    assert len(calls) == 1, f"{obj.__name__}'s docstring names {len(calls)} generate calls"
    parsed = ast.parse(f"generate({calls.pop()})", mode="eval").body
    return {k.arg: ast.literal_eval(k.value) for k in parsed.keywords}


PATHS = {  # path -> (the object whose docstring names the call, the engine it must equal)
    "PadProcessor": (PadProcessor, "pad"), "ArgsProcessor": (ArgsProcessor, "args"),
    "PadProcessor implicit": (PadProcessor, "implicit"),
    "AmuletProcessor": (AmuletProcessor, "amulet"),
    "LinearAlignmentProcessor": (LinearAlignmentProcessor, "la"),
    "amulet_generate": (amulet_generate, "amulet"), "la_generate": (la_generate, "la"),
    "pad_implicit_generate": (pad_implicit_generate, "implicit"),
}


@torch.inference_mode()
def through_generate(path, qwen2, guides, prompts, steps=STEPS, **call) -> list[list[int]]:
    """New tokens of `model.generate` by `path`, the EOS ids and pad from the checkpoint."""
    model, tokenizer = qwen2
    pref, base = (left_pad(p, tokenizer.pad_token_id) for p in prompts)
    reads, extra, options = pref, {}, {}
    if path == "PadProcessor":
        options["logits_processor"] = [PadProcessor(guides["persrm"], *pref, WEIGHT["pad"], TOPK)]
    elif path == "ArgsProcessor":
        options["logits_processor"] = [ArgsProcessor(guides["reward_model"], *pref,
                                                     WEIGHT["args"], TOPK)]
    elif path == "PadProcessor implicit":
        reads = base
        options["logits_processor"] = [PadProcessor(model, *pref, WEIGHT["implicit"], TOPK)]
    elif path in ("AmuletProcessor", "LinearAlignmentProcessor"):
        options["logits_processor"] = [PATHS[path][0](model, *base)]
    elif path == "pad_implicit_generate":
        reads, extra = base, {"pref_ids": pref[0], "pref_attention_mask": pref[1],
                              "weight": WEIGHT["implicit"], "topk": TOPK}
        options["custom_generate"] = pad_implicit_generate
    else:
        extra = {"base_ids": base[0], "base_attention_mask": base[1]}
        options["custom_generate"] = PATHS[path][0]
    out = model.generate(reads[0], attention_mask=reads[1], max_new_tokens=steps, **options,
                         **extra, **call)
    eos_ids = eos_token_ids(model, tokenizer)
    return [cut_at_eos(row, eos_ids) for row in out[:, reads[0].shape[1]:].tolist()]


def engine(method, qwen2, guides, prompts, steps=STEPS) -> list[list[int]]:
    model, tokenizer = qwen2
    pref, base = prompts
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    if method in ("amulet", "la"):
        rule = amulet_rule(60, 2.0, 2.0, 10.0, "closed_form") if method == "amulet" else \
            la_rule(2.0)
        return decode_two_prompts(model, pref, base, rule, steps, eos_ids, pad_id).token_ids
    settings = GuidedSettings(weight=WEIGHT[method], max_new_tokens=steps, eos_ids=eos_ids,
                              pad_id=pad_id, topk=TOPK)
    return guided_engine_tokens(method, model, guides, pref, base, settings)


@pytest.mark.parametrize("path", PATHS)
def test_the_call_each_docstring_names_gives_the_engine_tokens_under_qwen2s_config(
        qwen2, guides, prompts, path):
    call = call_in_docstring(PATHS[path][0])
    assert call == {"do_sample": False, "repetition_penalty": 1.0}
    got = through_generate(path, qwen2, guides, prompts, **call)
    assert got == engine(PATHS[path][1], qwen2, guides, prompts)


@pytest.mark.parametrize("path", ["PadProcessor", "ArgsProcessor", "PadProcessor implicit",
                                  "AmuletProcessor"])
def test_greedy_alone_keeps_the_checkpoints_repetition_penalty(qwen2, guides, prompts, path):
    """`do_sample=False` alone: generate still penalises the context's tokens (1.05) before the
    processor, and the tokens leave the engine's; resetting the penalty brings them back."""
    want = engine(PATHS[path][1], qwen2, guides, prompts, LONGER)
    assert through_generate(path, qwen2, guides, prompts, LONGER, do_sample=False) != want
    assert through_generate(path, qwen2, guides, prompts, LONGER,
                            **call_in_docstring(PATHS[path][0])) == want


def test_pad_implicit_generate_refuses_the_checkpoints_penalty(qwen2, guides, prompts):
    with pytest.raises(ValueError, match="no repetition penalties"):
        through_generate("pad_implicit_generate", qwen2, guides, prompts, do_sample=False)
