"""Decoding on the paper's checkpoints (stand-ins with their real tokenizers, chat templates, EOS
sets and generation configs, tests/standins.py), with the hf backend: the prompts the paper's
code builds with each real template, every method end to end, stopping on every EOS id each
checkpoint lists, and none of the checkpoints' sampling defaults or repetition penalty reaching
any method."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from cli_helpers import main_in_process, write_dataset
from standins import DECODERS, spec

from DecodingMethodsModels.prompts.amulet import (
    build_messages,
    encode_prompt,
    preference_sentence,
    system_text,
    template_accepts_system,
)
from DecodingMethodsModels.prompts.pad import encode_pad_prompt, preference_prompt

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTIONS = ["What is a good way to learn to cook pasta?", "Why is the sky blue?"]
METHODS = ("base", "pref", "beam", "la", "amulet")
SENTENCE = preference_sentence("creative")


@pytest.fixture(scope="module")
def tokenizers(standin_dirs) -> dict:
    from transformers import AutoTokenizer

    return {name: AutoTokenizer.from_pretrained(standin_dirs[name]) for name in DECODERS}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("standin-questions")
    write_dataset(out, "demo", QUESTIONS)
    return out


# ----- prompts ----------------------------------------------------------------------------------


def test_llama_3_1_prompt_has_the_date_lines_one_bos_and_the_assistant_header(tokenizers):
    tokenizer = tokenizers["llama-3.1-8b-instruct"]
    question = QUESTIONS[0]
    for sentence in (SENTENCE, ""):
        ids = encode_prompt(tokenizer, question, sentence, template_accepts_system(tokenizer))
        expected = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
                    f"{system_text(sentence).strip()}<|eot_id|>"
                    f"<|start_header_id|>user<|end_header_id|>\n\n{question}<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
        assert tokenizer.decode(ids) == expected
        assert ids.count(128000) == 1 and ids[-4:] == [128006, 78191, 128007, 271]


def test_qwen2_prompt_gets_its_default_system_turn_only_without_a_system_message(tokenizers):
    tokenizer = tokenizers["qwen2-7b-instruct"]
    question = QUESTIONS[1]
    ids = encode_prompt(tokenizer, question, SENTENCE, template_accepts_system(tokenizer))
    assert tokenizer.decode(ids) == (
        f"<|im_start|>system\n{system_text(SENTENCE)}<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
    bare = encode_pad_prompt(tokenizer, question, None)  # PAD's base prompt: no system turn
    assert tokenizer.decode(bare) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(encode_pad_prompt(tokenizer, question, "helpfulness")).startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        + preference_prompt("helpfulness"))


def test_mistral_refuses_a_system_role_so_the_system_text_is_folded(tokenizers):
    tokenizer = tokenizers["mistral-7b-instruct-v0.2"]
    assert not template_accepts_system(tokenizer)
    question = QUESTIONS[0]
    ids = encode_prompt(tokenizer, question, SENTENCE, False)
    # as mistral-common's SentencePiece model encodes the turn after one BOS ("<s>" is a special
    # token, so the text after it gets SentencePiece's leading "▁": "<s> [INST]" decoded)
    from mistral_common.tokens.tokenizers.sentencepiece import SentencePieceTokenizer
    from standins import package_file

    own = SentencePieceTokenizer(package_file("mistral_common", "data/tokenizer.model.v1"))
    turn = f"[INST] {system_text(SENTENCE)}\n\n{question} [/INST]"
    assert ids == own.encode(turn, bos=True, eos=False)
    assert tokenizer.decode(ids) == f"<s> {turn}" and ids.count(1) == 1


@pytest.mark.parametrize("name", DECODERS)
def test_reference_prompts_are_the_paper_codes(tokenizers, name):
    """`--reference_prompts`: the paper's code's ids, rebuilt here as it builds them (the
    template without the assistant header, the text tokenised again with special tokens: a
    second BOS on Llama-3.1 and Mistral, none on Qwen2)."""
    tokenizer = tokenizers[name]
    system_role = template_accepts_system(tokenizer)
    messages = build_messages(QUESTIONS[0], SENTENCE, system_role)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    paper = tokenizer(text)["input_ids"]
    assert encode_prompt(tokenizer, QUESTIONS[0], SENTENCE, system_role, reference=True) == paper
    bos = tokenizer.bos_token_id
    assert (paper[:2] == [bos, bos]) == (bos is not None)


# ----- every method, every EOS id ---------------------------------------------------------------


def forcing_copy(source, token: int, out):
    """`source` with weights that make `token` the argmax at every step: attention and MLP
    outputs zeroed (the residual stream is the embedding), every embedding the same positive
    vector, and an LM head whose only non-zero row is `token`'s."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                weight.zero_()
        model.get_input_embeddings().weight.fill_(1.0)
        head = model.get_output_embeddings().weight
        head.zero_()
        head[token] = 1.0
    model.save_pretrained(out)
    for item in source.iterdir():
        if item.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(item, out / item.name)
    return out


def run(model, data, out, method: str, *extra: str) -> tuple[list[dict], dict, str]:
    args = ["--model_name", str(model), "--data_dir", str(data), "--output_dir", str(out),
            "--eval_data", "demo", "--method", method, "--max_new_tokens", "5",
            "--num_beams", "2", "--device", "cpu", "--batch_size", "2", *extra]
    code, err = main_in_process(args)
    assert code == 0, err
    records, metas = {}, {}
    for final in out.rglob("*.json"):
        if final.name.endswith(".meta.json"):
            metas[final.name.removesuffix(".meta.json")] = json.loads(final.read_text())
        else:
            records[final.stem] = json.loads(final.read_text())
    return records, metas, err


def eos_cases() -> list[tuple[str, int]]:
    ids = []
    for name in DECODERS:
        listed = spec(name)["generation_config"]["eos_token_id"]
        ids += [(name, i) for i in ([listed] if isinstance(listed, int) else listed)]
    return ids


@pytest.mark.parametrize(("name", "eos"), eos_cases(), ids=lambda v: str(v))
def test_every_method_stops_on_every_listed_eos_id(standin_dirs, data, tmp_path, name, eos):
    """A model that writes `eos` first: every method's response is empty after one token
    (Llama-3.1 stops on 128001 and 128008 too, not only on its tokenizer's 128009)."""
    model = forcing_copy(standin_dirs[name], eos, tmp_path / name)
    records, metas, _ = run(model, data, tmp_path / "out", ",".join(METHODS))
    records_pad, metas_pad, _ = run(model, data, tmp_path / "out", "pad", "--rm_name", "self")
    for method in (*METHODS, "pad"):
        found = {**records, **records_pad}[method]
        assert [r["response"] for r in found] == ["", ""], method
        assert {**metas, **metas_pad}[method]["generated_tokens"] == 2, method


@pytest.mark.parametrize("name", DECODERS)
def test_a_non_eos_token_runs_to_max_new_tokens(standin_dirs, data, tmp_path, name):
    tokenizer_token = 1000  # an ordinary token of every vocabulary
    model = forcing_copy(standin_dirs[name], tokenizer_token, tmp_path / name)
    _, metas, _ = run(model, data, tmp_path / "out", "pref,amulet")
    assert metas["pref"]["generated_tokens"] == metas["amulet"]["generated_tokens"] == 10


# ----- fairness against the real generation configs ---------------------------------------------


def neutral_copy(source, out):
    """`source` with a generation config that holds only its EOS ids (no sampling defaults,
    no repetition penalty)."""
    shutil.copytree(source, out)
    config = json.loads((out / "generation_config.json").read_text())
    neutral = {k: config[k] for k in ("eos_token_id", "bos_token_id") if k in config}
    (out / "generation_config.json").write_text(json.dumps(neutral))
    return out


@pytest.mark.parametrize("name", ["llama-3.1-8b-instruct", "qwen2-7b-instruct"])
def test_the_checkpoints_generation_config_reaches_no_method(standin_dirs, data, tmp_path,
                                                               name):
    """Llama-3.1 samples at 0.6 / top_p 0.9 by default, Qwen2 at 0.7 / top_k 20 / top_p 0.8
    with a repetition penalty of 1.05: every method decodes as with a neutral config, and the
    run says what it set aside."""
    published = spec(name)["generation_config"]
    assert published["do_sample"] is True
    real, _, err = run(standin_dirs[name], data, tmp_path / "real", ",".join(METHODS),
                       "--reinforce_ratio", "0")
    neutral, _, _ = run(neutral_copy(standin_dirs[name], tmp_path / name), data,
                        tmp_path / "neutral", ",".join(METHODS), "--reinforce_ratio", "0")
    assert real == neutral
    assert real["pref"] == real["la"]  # generate and the engine decode alike (ratio 0)
    assert "generation config sets" in err and "temperature" in err
