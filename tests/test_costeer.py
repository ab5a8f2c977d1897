"""--method costeer against a naive reference of CoSteer's public generate loop (one question
at a time, three separate KV-cached forwards per token, the T FTRL steps literally, argmax,
stop on the tokenizer's EOS), token for token, greedy, on CoSteer's own prompts
(--prompt_style costeer): with the embedded model steering itself, and with a tiny random SLM
sharing its tokenizer; 16 questions. Also: costeer with the model as its own SLM writes la's
file with ratio c_T - 1; an SLM of another tokenizer and bad flags are one-line refusals."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import (
    QUESTIONS,
    main_in_process,
    sensitive_model,
    shared_dir,
    write_dataset,
)

from DecodingMethodsModels.models.loading import (
    EMBEDDED_MODEL,
    load_model,
    load_tokenizer,
    resolve_model,
)
from DecodingMethodsModels.rules.costeer import costeer_ratio

SIXTEEN = QUESTIONS + [
    "What should I pack for a weekend hike?",
    "How do vaccines train the immune system?",
    "Tell me a fun fact about octopuses.",
    "How can I make my mornings less rushed?",
]
TOKENS = 16
C_20 = costeer_ratio(20, 2.0, 1.0, 2.0, 10.0)


def naive_costeer(llm, slm, tokenizer, question: str, preference: str, max_new_tokens: int,
                  T=20, alpha=2.0, beta=1.0, lam=2.0, eta=10.0) -> str:
    """CoSteer's generate loop as its public code runs it, for one question."""
    def chat(text):
        messages = [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": text}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    personalised = question + "\nYour answer should be as " + preference + " as possible"
    inputs = [tokenizer([chat(t)], return_tensors="pt").input_ids
              for t in (question, question, personalised)]
    models, caches, generated = (llm, slm, slm), [None, None, None], []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            outs = [m(input_ids=x, past_key_values=c, use_cache=True)
                    for m, x, c in zip(models, inputs, caches, strict=True)]
            caches = [o.past_key_values for o in outs]
            z_llm, z_plain, z_pers = (o.logits[:, -1, :].float() for o in outs)
            base = torch.log_softmax(z_llm, -1)
            delta = torch.log_softmax(z_pers, -1) - torch.log_softmax(z_plain, -1)
            player, cumulative = base.clone(), torch.zeros_like(base)
            for step in range(1, T + 1):
                cumulative = cumulative + alpha * (player - base) + beta * delta
                player = torch.log_softmax((step * lam * base + cumulative + player / eta)
                                           / (step * lam + 1 / eta), -1)
            token = torch.argmax(player, dim=-1, keepdim=True)
            generated.append(int(token))
            if int(token) == tokenizer.eos_token_id:
                break
            inputs = [token, token, token]
    return tokenizer.decode(generated, skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = shared_dir(tmp_path_factory, "costeer-data")
    if not (path / "sixteen.json").is_file():
        write_dataset(path, "sixteen", SIXTEEN)
    return path


@pytest.fixture(scope="module")
def embedded():
    source = resolve_model(EMBEDDED_MODEL)
    return load_model(source, "cpu", "float32"), load_tokenizer(source)


@pytest.fixture(scope="module")
def tiny_slm(tmp_path_factory, tiny_model_dirs):
    return sensitive_model(tmp_path_factory, tiny_model_dirs)


def responses(out, method: str, pref: str = "concise") -> list[str]:
    final = out / pref / EMBEDDED_MODEL / "sixteen" / f"{method}.json"
    return [r["response"] for r in json.loads(final.read_text())]


def run(data, out, *extra: str) -> None:
    args = ["--data_dir", str(data), "--eval_data", "sixteen", "--output_dir", str(out),
            "--pref_name", "concise", "--prompt_style", "costeer", "--max_new_tokens",
            str(TOKENS), "--batch_size", "8", "--device", "cpu", *extra]
    code, err = main_in_process(args)
    assert code == 0, err


@pytest.fixture(scope="module")
def self_steered(tmp_path_factory, data):
    """costeer (the embedded model its own SLM) and la with ratio c_T - 1, in one command."""
    out = tmp_path_factory.mktemp("costeer-self")
    run(data, out, "--method", "costeer,la", "--reinforce_ratio", repr(C_20 - 1.0))
    return out


def test_costeer_is_coSteers_loop_token_for_token_on_the_embedded_model(self_steered, embedded):
    model, tokenizer = embedded
    want = [naive_costeer(model, model, tokenizer, q, "concise", TOKENS) for q in SIXTEEN]
    assert responses(self_steered, "costeer") == want


def test_costeer_with_the_model_as_slm_is_la_with_ratio_c_minus_1(self_steered):
    costeer, la = responses(self_steered, "costeer"), responses(self_steered, "la")
    assert len(costeer) == 16 and costeer == la


def test_costeer_with_a_tiny_slm_is_coSteers_loop(tmp_path, data, embedded, tiny_slm,
                                                  self_steered):
    model, tokenizer = embedded
    slm = load_model(resolve_model(str(tiny_slm)), "cpu", "float32")
    run(data, tmp_path, "--method", "costeer", "--slm_name", str(tiny_slm))
    want = [naive_costeer(model, slm, tokenizer, q, "concise", TOKENS) for q in SIXTEEN]
    got = responses(tmp_path, "costeer")
    assert got == want
    sidecar = json.loads((tmp_path / "concise" / EMBEDDED_MODEL / "sixteen" /
                          "costeer.meta.json").read_text())
    assert sidecar["fingerprint"]["slm"] == str(tiny_slm)
    assert sidecar["fingerprint"]["costeer_ratio"] == pytest.approx(1.7833, abs=5e-5)
    # the tiny SLM steers: its answers are not those of the model steering itself
    assert got != responses(self_steered, "costeer")
