"""Public ARGS's prompt through the CLI: `--method args --prompt_style raw` decodes on the
question text alone (special tokens, no chat template), as ARGS's argsearch.py tokenises its
HH-RLHF prompts; tiny random models with the SmolLM2 tokenizer."""

from __future__ import annotations

import json

import pytest
from cli_helpers import QUESTIONS, classifier_model, gen_args, main_in_process, run_files

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 6


def test_raw_prompt_style_decodes_the_untemplated_question(model, data, tmp_path,
                                                           tmp_path_factory, tiny_model_dirs):
    from transformers import AutoTokenizer

    from DecodingMethodsModels.engines.reward_guided import GuidedSettings, decode_args
    from DecodingMethodsModels.models.guides import load_reward_model
    from DecodingMethodsModels.models.loading import (
        eos_token_ids,
        load_model,
        pad_token_id,
        resolve_model,
    )
    from DecodingMethodsModels.pipeline.decode import decode_response

    reward_model = classifier_model(tmp_path_factory, tiny_model_dirs)
    out = tmp_path / "out"
    code, err = main_in_process(gen_args(model, data, out, "--rm_name", str(reward_model),
                                         "--prompt_style", "raw", method="args",
                                         max_new_tokens=STEPS, batch_size=4))
    assert code == 0, err
    final, directory = run_files(out, model, "args")
    written = json.loads(final.read_text())
    fingerprint = json.loads((directory / "args.meta.json").read_text())["fingerprint"]
    assert fingerprint["prompt_style"] == "raw"

    tokenizer = AutoTokenizer.from_pretrained(model)
    decoder = load_model(resolve_model(str(model)), "cpu", "float32")
    eos = eos_token_ids(decoder, tokenizer)
    raw = [tokenizer(q)["input_ids"] for q in QUESTIONS]  # as ARGS's get_input_ids
    assert all("<|im_start|>" not in tokenizer.decode(ids) for ids in raw)
    settings = GuidedSettings(weight=1.5, max_new_tokens=STEPS, eos_ids=eos,
                              pad_id=pad_token_id(tokenizer, eos))
    direct = decode_args(decoder, load_reward_model(str(reward_model), "cpu", "float32"), raw,
                         settings).token_ids
    assert [r["response"] for r in written] == [decode_response(tokenizer, ids, eos)
                                                for ids in direct]


def test_raw_prompt_style_is_for_args_alone(model, data, tmp_path):
    out = tmp_path / "out"
    code, err = main_in_process(gen_args(model, data, out, "--prompt_style", "raw",
                                         method="pref"))
    assert code == 2 and "is for --method args alone" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_model_without_chat_template_loads_for_raw_prompts_only(tmp_path):
    """ARGS's own models (an SFT Llama, OPT) have no chat template: raw prompts need none."""
    from rm_helpers import build_tokenizer

    from DecodingMethodsModels.errors import UserError
    from DecodingMethodsModels.models.loading import load_tokenizer, resolve_model

    build_tokenizer(tmp_path, chat_template=False)
    source = resolve_model(str(tmp_path))
    with pytest.raises(UserError, match="no chat template"):
        load_tokenizer(source)
    assert load_tokenizer(source, needs_chat_template=False).chat_template is None
