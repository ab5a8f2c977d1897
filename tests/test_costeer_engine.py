"""CoSteer on the prompt-rows engine with an SLM of its own (tiny random models sharing the
embedded tokenizer): continuous batching gives each question's tokens alone, the iterative
solver the closed form's, sampling is reproducible; and its bad inputs are one-line refusals
(exit 2, nothing written), an SLM of another tokenizer refused before any weight loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import (
    QUESTIONS,
    build_variant,
    finish,
    main_cmd,
    sensitive_model,
    shared_dir,
    start,
    tree_state,
    write_dataset,
)

from DecodingMethodsModels.engines.prompt_rows import Reader, decode_prompt_rows, stream_prompt_rows
from DecodingMethodsModels.prompts.costeer import costeer_sentence, encode_costeer_prompt
from DecodingMethodsModels.rules.costeer import costeer_rule
from DecodingMethodsModels.rules.sampling import SamplingSettings


def prompts(tokenizer, questions=QUESTIONS[:8]):
    sentence = costeer_sentence("verbose")
    return {"pref": [encode_costeer_prompt(tokenizer, q, sentence) for q in questions],
            "base": [encode_costeer_prompt(tokenizer, q, "") for q in questions]}


def readers(llm, slm):
    return (Reader(llm, ("base",)), Reader(slm, ("pref", "base")))


def test_continuous_batching_gives_each_question_its_tokens_alone(costeer_models):
    llm, slm, tokenizer = costeer_models
    ids, rule = prompts(tokenizer), costeer_rule(20, 2.0, 1.0, 2.0, 10.0)
    alone = [decode_prompt_rows(readers(llm, slm), {k: [v[i]] for k, v in ids.items()}, rule,
                                12, [2], 2).token_ids[0] for i in range(8)]
    stream = dict(stream_prompt_rows(readers(llm, slm), ids, rule, 12, [2], 2, batch_size=3))
    assert [stream[i] for i in range(8)] == alone
    assert len({tuple(t) for t in alone}) > 1


def test_the_iterative_solver_gives_the_closed_forms_tokens(costeer_models):
    llm, slm, tokenizer = costeer_models
    ids = prompts(tokenizer)
    got = {solver: decode_prompt_rows(readers(llm, slm), ids,
                                      costeer_rule(20, 2.0, 1.0, 2.0, 10.0, solver), 12, [2],
                                      2).token_ids
           for solver in ("closed_form", "iterative")}
    assert got["closed_form"] == got["iterative"]


def test_sampling_is_reproducible_and_samples(costeer_models):
    llm, slm, tokenizer = costeer_models
    ids, rule = prompts(tokenizer), costeer_rule(20, 2.0, 1.0, 2.0, 10.0)
    sampling = SamplingSettings(True, 1.0, None, 0.9)

    def draw(seed):
        generator = torch.Generator().manual_seed(seed)
        return decode_prompt_rows(readers(llm, slm), ids, rule, 12, [2], 2, sampling,
                                  generator).token_ids

    greedy = decode_prompt_rows(readers(llm, slm), ids, rule, 12, [2], 2).token_ids
    assert draw(1) == draw(1)
    assert draw(1) != greedy


# ----- bad inputs --------------------------------------------------------------------------

CASES = {  # name: (args, fragment of the one error line)
    "iterations_negative": (("--costeer_iterations", "-1"), "--costeer_iterations must be >= 0"),
    "lambda_zero": (("--costeer_lambda", "0"), "--costeer_lambda must be > 0"),
    "eta_zero": (("--costeer_eta", "0"), "--costeer_eta must be > 0"),
    "alpha_negative": (("--costeer_alpha", "-1"), "--costeer_alpha must be a finite number >= 0"),
    "beta_nan": (("--costeer_beta", "nan"), "--costeer_beta must be a finite number"),
    "solver_unknown": (("--costeer_solver", "newton"), "invalid choice: 'newton'"),
    "prompt_style_with_args": (("--prompt_style", "costeer", "--method", "args", "--rm_name",
                                "x"), "--prompt_style costeer (coSteer's prompts) is for"),
    "prompt_style_with_reference_prompts": (("--prompt_style", "costeer",
                                             "--reference_prompts"), "drop one of the two"),
    "slm_missing": (("--slm_name", "./no/such/slm"), "model directory not found"),
    "slm_other_tokenizer": (("--slm_name", "{other}"),
                            "the slm's tokenizer gives other ids than the decoding model's"),
    "vllm_separate_slm": (("--backend", "vllm", "--slm_name", "{other}"),
                          "--backend vllm runs costeer with the model as its own slm"),
}


@pytest.fixture(scope="module")
def other_tokenizer_slm(tmp_path_factory) -> Path:
    """A tiny Llama saved with rm_helpers' 400-token BPE: an SLM of another tokenizer."""
    from rm_helpers import build_tokenizer, tiny_llama_config
    from transformers import LlamaForCausalLM

    out = shared_dir(tmp_path_factory, "slm-other-tokenizer")
    if not (out / "model.safetensors").is_file():
        tokenizer = build_tokenizer(out)
        LlamaForCausalLM(tiny_llama_config(tokenizer)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, tiny_model_dirs, other_tokenizer_slm) -> dict[str, tuple]:
    model = sensitive_model(tmp_path_factory, tiny_model_dirs)
    running = {}
    for name, (args, _) in CASES.items():
        root = tmp_path_factory.mktemp(name)
        write_dataset(root / "data", "demo", QUESTIONS[:2])
        args = [a.replace("{other}", str(other_tokenizer_slm)) for a in args]
        cmd = main_cmd(["--model_name", str(model), "--data_dir", str(root / "data"),
                        "--output_dir", str(root / "out"), "--method", "costeer",
                        "--max_new_tokens", "4", "--device", "cpu", *args])
        running[name] = (root, tree_state(root), start(cmd))
    return {name: (*finish(proc), before, tree_state(root))
            for name, (root, before, proc) in running.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_bad_costeer_input_is_one_line_exit_2_and_writes_nothing(name, outcomes):
    code, _, err, before, after = outcomes[name]
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert "Traceback" not in err, err
    assert code == 2 and len(errors) == 1, err
    assert CASES[name][1].lower() in errors[0].lower(), errors[0]
    assert after == before


def test_another_tokenizer_is_refused_before_any_weight_loads(outcomes):
    err = outcomes["slm_other_tokenizer"][2]
    assert "Loading weights" not in err and "combines the two models' log-probs" in err


# ----- output files, --limit extension, refused settings, grids ----------------------------


def test_a_costeer_run_extends_with_limit_and_refuses_other_settings(tmp_path, tiny_model_dirs,
                                                                     tmp_path_factory):
    from cli_helpers import main_in_process

    model = sensitive_model(tmp_path_factory, tiny_model_dirs)
    slm = build_variant(tiny_model_dirs["qwen2"], shared_dir(tmp_path_factory, "tiny-slm"),
                        initializer_range=0.5)
    write_dataset(tmp_path / "data", "demo", QUESTIONS[:4])
    common = ["--model_name", str(model), "--data_dir", str(tmp_path / "data"), "--output_dir",
              str(tmp_path / "out"), "--method", "costeer", "--slm_name", str(slm),
              "--max_new_tokens", "6", "--device", "cpu", "--batch_size", "2",
              "--pref_name", "concise,verbose"]
    assert main_in_process([*common, "--limit", "2"])[0] == 0
    final = tmp_path / "out" / "concise" / model.name / "demo" / "costeer.json"
    first = json.loads(final.read_text())
    code, err = main_in_process(common)
    assert code == 0, err
    extended = json.loads(final.read_text())
    assert [r["index"] for r in extended] == [0, 1, 2, 3] and extended[:2] == first
    assert (tmp_path / "out" / "verbose" / model.name / "demo" / "costeer.json").is_file()
    code, err = main_in_process([*common, "--costeer_beta", "2"])
    assert code == 2 and "costeer_beta" in err and "--overwrite" in err
    sidecar = json.loads(final.with_suffix(".meta.json").read_text())
    assert sidecar["environment"]["costeer"]["slm"] == str(slm)
    assert sidecar["fingerprint"]["slm"] == str(slm)


def test_an_slm_with_a_wider_padded_vocabulary_is_read_over_the_shared_ids(costeer_models):
    """Checkpoints pad their embeddings to different widths (Qwen2.5-7B against 1.5B): the
    engine compares the ids both score, as the rule on the cut log-probs says."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    llm, _, tokenizer = costeer_models
    config = Qwen2Config(vocab_size=len(tokenizer) + 64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         initializer_range=0.5)
    torch.manual_seed(3)
    wide = Qwen2ForCausalLM(config).eval()
    ids, rule = prompts(tokenizer, QUESTIONS[:3]), costeer_rule(20, 2.0, 1.0, 2.0, 10.0)
    first = [t[0] for t in decode_prompt_rows(readers(llm, wide), ids, rule, 1, [2],
                                              2).token_ids]
    vocab = len(tokenizer)
    for i in range(3):
        with torch.no_grad():
            b = torch.log_softmax(llm(torch.tensor([ids["base"][i]])).logits[:, -1].float(), -1)
            pers, plain = (torch.log_softmax(wide(torch.tensor([ids[k][i]])).logits[:, -1]
                                             .float(), -1)[:, :vocab] for k in ("pref", "base"))
        assert first[i] == int(rule(b[:, :vocab], pers, plain).argmax())
