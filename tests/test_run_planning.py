"""Planning a run before any weight is loaded: what a fingerprint records, how over-long
questions are cut for both prompts alike, and where a symlinked GGUF file is looked up."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from config import RunConfig
from DecodingMethodsModels.pipeline.encode import encode_questions
from DecodingMethodsModels.pipeline.eval_data import Dataset, Question
from DecodingMethodsModels.pipeline.plan import PlannedRun, fingerprint


def planned(method: str = "amulet") -> PlannedRun:
    dataset = Dataset("demo", "demo.json", "0" * 64, (Question(0, "Why?"),))
    return PlannedRun(method, "creative", "Be creative.", dataset, "out")


def test_fingerprint_records_the_resolved_dtype_and_device_not_auto():
    printed = fingerprint(RunConfig(device="cpu", dtype="auto"), planned(), "m")
    assert printed["dtype"] == "float32" and printed["device_type"] == "cpu"
    explicit = fingerprint(RunConfig(device="cpu", dtype="float32"), planned(), "m")
    assert printed == explicit  # auto and what it resolves to resume each other


def test_fingerprint_of_a_greedy_run_ignores_the_seed_and_a_sampled_one_keeps_it():
    greedy = [fingerprint(RunConfig(device="cpu", seed=s), planned(), "m") for s in (1, 2)]
    assert greedy[0] == greedy[1] and "seed" not in greedy[0]
    sampled = [fingerprint(RunConfig(device="cpu", seed=s, do_sample=True), planned(), "m")
               for s in (1, 2)]
    assert sampled[0]["seed"] == 1 and sampled[1]["seed"] == 2


def test_fingerprint_ignores_the_thread_count():
    prints = [fingerprint(RunConfig(device="cpu", num_threads=n), planned(), "m")
              for n in (None, 1, 4)]
    assert prints[0] == prints[1] == prints[2]


def test_fingerprint_records_the_penalty_settings():
    plain = fingerprint(RunConfig(device="cpu"), planned("pref"), "m")
    penalised = fingerprint(RunConfig(device="cpu", repetition_penalty=1.2), planned("pref"), "m")
    adopted = fingerprint(RunConfig(device="cpu", use_model_generation_config=True),
                          planned("pref"), "m")
    assert len({str(sorted(f.items())) for f in (plain, penalised, adopted)}) == 3


LONG_PREFERENCE = "Answer in the voice of a patient teacher. " * 12


def user_turn(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids).split("<|im_start|>user")[1]


def test_truncation_cuts_the_question_once_for_both_prompts(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    question = "Please summarise the following. " + "alpha beta gamma delta " * 60
    dataset = Dataset("long", "long.json", "0" * 64, (Question(0, question),))
    config = SimpleNamespace(max_new_tokens=16, truncate_long_prompts=True,
                             reference_prompts=False, prompt_style="chat")
    with pytest.warns(UserWarning, match="cut from the left"):
        (pref,), (base,) = encode_questions(tokenizer, dataset, LONG_PREFERENCE, True, 400,
                                            config)
    assert len(pref) + 16 <= 400 and len(pref) > len(base)
    assert user_turn(tokenizer, pref) == user_turn(tokenizer, base)
    assert len(user_turn(tokenizer, pref)) < len(question)


def test_a_symlinked_gguf_file_is_found_under_its_target_name(tmp_path):
    from DecodingMethodsModels.models.loading import embedded_gguf_path, resolve_model

    link = tmp_path / "my-model.gguf"
    link.symlink_to(embedded_gguf_path())
    source = resolve_model(str(link))
    from pathlib import Path

    assert (Path(source.path) / source.gguf_file).resolve() == embedded_gguf_path().resolve()
    assert source.short_name == "my-model"
