"""The vLLM backend against the hf backend, token for token: base, pref, beam, la, amulet (both
solvers) and implicit PAD, greedy, on 16 questions of the real embedded model and of tiny
random Llama and Qwen2 models (float32, CPU); seeded sampling that does not depend on the
batch. One engine per model for the whole module."""

from __future__ import annotations

import json

import pytest
from vllm_helpers import (
    build_sharp_model,
    hf_tokens,
    kept,
    prompts,
    require_vllm,
    vllm_tokens,
)

require_vllm()

from conftest import benchmark_file  # noqa: E402

from DecodingMethodsModels.pipeline.guided_config import GuidedRunConfig  # noqa: E402
from DecodingMethodsModels.pipeline.methods import DecodeSettings  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 10
IMPLICIT_PAD = GuidedRunConfig(rm_weight=0.8, topk=10, mode="greedy", sample_temp=None, line=0)


def questions(count: int = 16) -> list[str]:
    rows = json.loads(benchmark_file("UltraFeedback_truthful_qa.json").read_text())
    return [r["question"] for r in rows[:count]]


def settings_for(model, tokenizer, **extra) -> DecodeSettings:
    from DecodingMethodsModels.models.loading import eos_token_ids, pad_token_id

    eos = eos_token_ids(model, tokenizer)
    return DecodeSettings(max_new_tokens=STEPS, eos_ids=eos, pad_id=pad_token_id(tokenizer, eos),
                          **extra)


def engine_for(folder, max_num_seqs: int = 16, **extra):
    from DecodingMethodsModels.backends.vllm_driver import EngineSettings, build_engine

    return kept(build_engine(EngineSettings(model=str(folder), max_model_len=512,
                                            max_num_seqs=max_num_seqs,
                                            kv_cache_memory_bytes=128 * 2**20, **extra)))


@pytest.fixture(scope="module")
def embedded(embedded_model, tmp_path_factory):
    """(hf model, tokenizer, vLLM engine) of SmolLM2-135M-Instruct, float32."""
    from DecodingMethodsModels.backends.vllm_backend import model_folder
    from DecodingMethodsModels.models.loading import EMBEDDED_MODEL, resolve_model

    model, tokenizer = embedded_model
    folder = model_folder(resolve_model(EMBEDDED_MODEL), tokenizer, lambda: model)
    return model, tokenizer, engine_for(folder)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, embedded, tmp_path_factory):
    """(hf model, tokenizer, vLLM engine) of a tiny sharpened random model."""
    from transformers import AutoModelForCausalLM

    tokenizer = embedded[1]
    folder = build_sharp_model(request.param, tokenizer,
                               tmp_path_factory.mktemp("vllm_tiny") / request.param)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return model, tokenizer, engine_for(folder)


def check_same(model, tokenizer, engine, method, **extra):
    from DecodingMethodsModels.backends.vllm_driver import Driver

    pref, base = prompts(tokenizer, questions())
    settings = settings_for(model, tokenizer, **extra)
    guided = IMPLICIT_PAD if method == "pad" else None
    want = hf_tokens(model, method, pref, base, settings, guided)
    driver = Driver(engine, 16)
    got = vllm_tokens(driver, method, pref, base, settings, guided=guided)
    assert got == want
    assert driver.reruns == 0  # whole pairs between steps, no chunked prefill: always in step
    return got


@pytest.mark.parametrize("method", ["base", "pref", "la", "amulet", "pad"])
def test_embedded_model_same_tokens_as_hf(embedded, method):
    tokens = check_same(*embedded, method, reinforce_ratio=4.6487)
    assert len({tuple(t) for t in tokens}) > 8  # real, different answers


def test_embedded_iterative_amulet_same_tokens_as_hf(embedded):
    check_same(*embedded, "amulet", amulet_solver="iterative", iteration_num=20)


@pytest.mark.parametrize("method", ["base", "pref", "la", "amulet", "pad"])
def test_tiny_models_same_tokens_as_hf(tiny, method):
    check_same(*tiny, method)


def beam_tokens(engine, model, tokenizer, num_beams, max_num_seqs=16, count=16):
    from DecodingMethodsModels.backends.vllm_beam import BeamDriver

    pref, base = prompts(tokenizer, questions(count))
    settings = settings_for(model, tokenizer, num_beams=num_beams)
    want = hf_tokens(model, "beam", pref, base, settings)
    found = dict(BeamDriver(engine, max_num_seqs).run(
        pref, num_beams, settings.eos_ids, STEPS, model.config.vocab_size))
    return [found[k] for k in range(len(pref))], want, pref


def test_embedded_beam_same_tokens_as_hf(embedded):
    """transformers' beam search over vLLM's log-probs: the hf backend's answers, with four
    questions at once (16 rows) or one at a time (four beams in 4 rows). Eight questions: each
    beam step is a request per beam, re-reading its prompt on CPU (about 15 s a question)."""
    got, want, pref = beam_tokens(embedded[2], *embedded[:2], 4, count=8)
    assert got == want
    greedy = hf_tokens(embedded[0], "pref", pref, pref, settings_for(*embedded[:2]))
    assert any(a != b for a, b in zip(got, greedy, strict=True))  # beams changed an answer
    narrow, _, _ = beam_tokens(embedded[2], *embedded[:2], 4, max_num_seqs=4, count=3)
    assert narrow == want[:3]


def test_tiny_models_beam_same_tokens_as_hf(tiny):
    got, want, _ = beam_tokens(tiny[2], *tiny[:2], 3)
    assert got == want


def test_la_differs_from_pref(embedded):
    """The processor really changes the tokens (pref and la agree nowhere near everywhere)."""
    from DecodingMethodsModels.backends.vllm_driver import Driver

    model, tokenizer, engine = embedded
    pref, base = prompts(tokenizer, questions())
    settings = settings_for(model, tokenizer, reinforce_ratio=4.6487)
    driver = Driver(engine, 16)
    la = vllm_tokens(driver, "la", pref, base, settings)
    plain = vllm_tokens(driver, "pref", pref, base, settings)
    assert sum(a != b for a, b in zip(la, plain, strict=True)) >= 4


@pytest.mark.parametrize("method", ["pref", "la", "amulet", "pad"])
def test_sampling_reproducible_across_batch_sizes(embedded, method):
    """A sampled answer depends on the question's seed only: the same with 8 pairs at once,
    one at a time, and the questions in reverse order."""
    from DecodingMethodsModels.backends.vllm_driver import Driver
    from DecodingMethodsModels.rules.sampling import SamplingSettings

    model, tokenizer, engine = embedded
    pref, base = prompts(tokenizer, questions(6))
    sampling = SamplingSettings(do_sample=True, temperature=1.0, top_p=0.95)
    settings = settings_for(model, tokenizer, sampling=sampling)
    guided = None
    if method == "pad":
        guided = GuidedRunConfig(rm_weight=0.8, topk=10, mode="topk", sample_temp=1.0, line=0)
    seeds = [11, 12, 13, 14, 15, 16]
    wide = vllm_tokens(Driver(engine, 16), method, pref, base, settings, seeds, guided)
    narrow = vllm_tokens(Driver(engine, 2), method, pref, base, settings, seeds, guided)
    backwards = vllm_tokens(Driver(engine, 4), method, pref[::-1], base[::-1], settings,
                            seeds[::-1], guided)[::-1]
    assert wide == narrow == backwards
    other = vllm_tokens(Driver(engine, 16), method, pref, base, settings,
                        [s + 100 for s in seeds], guided)
    assert other != wide  # the seed matters
    greedy = vllm_tokens(Driver(engine, 16), method, pref, base,
                         settings_for(model, tokenizer),
                         guided=IMPLICIT_PAD if method == "pad" else None)
    assert greedy != wide  # and it is sampling


@pytest.mark.parametrize("method", ["la", "pad_implicit"])
def test_library_personalise_on_vllm_same_as_hf(embedded_model, method):
    from DecodingMethodsModels import personalise

    model, tokenizer = embedded_model
    asked = questions(4)
    hf = personalise(model, tokenizer, asked, method=method, max_new_tokens=STEPS)
    on_vllm = personalise(model, tokenizer, asked, method=method, max_new_tokens=STEPS,
                          backend="vllm")
    assert on_vllm == hf


def test_library_takes_a_model_loaded_straight_from_gguf(monkeypatch):
    """A model loaded from the GGUF file itself (no conversion cache) is flagged quantized by
    transformers, which then refuses to save or cast it; personalise(backend="vllm") still
    hands its (plain float32) weights to vLLM, and leaves the flag as it found it."""
    from DecodingMethodsModels import personalise
    from DecodingMethodsModels.models.loading import (
        EMBEDDED_MODEL,
        load_model,
        load_tokenizer,
        resolve_model,
    )

    monkeypatch.setenv("AMULET_CACHE_DIR", "off")
    source = resolve_model(EMBEDDED_MODEL)
    model, tokenizer = load_model(source, "cpu", "float32"), load_tokenizer(source)
    assert model.is_quantized  # the case this test is about
    asked = questions(2)
    hf = personalise(model, tokenizer, asked, method="la", max_new_tokens=STEPS)
    assert personalise(model, tokenizer, asked, method="la", max_new_tokens=STEPS,
                       backend="vllm") == hf
    assert model.is_quantized
