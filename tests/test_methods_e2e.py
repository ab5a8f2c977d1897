"""All five methods end to end through `python main.py`, on tiny random Llama, Qwen2 and Mistral
models (one with a chat template that rejects the system role) and once on the real embedded
default; plus the prompt invariants every method relies on (one BOS, the assistant header, the
system text folded into the user turn when the template has no system role)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from DecodingMethodsModels.prompts.amulet import (
    build_messages,
    encode_prompt,
    preference_sentence,
    system_text,
    template_accepts_system,
)

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("base", "pref", "beam", "la", "amulet")
# deliberately out of index order on disk: the output must come back sorted by index
QUESTIONS = [
    {"index": 7, "question": "Why is the sky blue?"},
    {"index": 2, "question": "Write a haiku about a long road through the hills after rain."},
    {"index": 4, "question": "Hi"},
]
RECORD_KEYS = {"index", "question", "preference", "response"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("e2e_data")
    (path / "three.json").write_text(json.dumps(QUESTIONS))
    return path


def main_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMULET_DATA")}
    env["HF_HUB_OFFLINE"] = "1"
    # one thread: faster for these small matrices, and far faster on a busy machine
    env["OMP_NUM_THREADS"] = "1"
    return env


def succeeded(name: str, run: tuple[int, str]) -> None:
    returncode, stderr = run
    assert returncode == 0, f"{name}: {stderr[-3000:]}"
    assert "Traceback" not in stderr


def read_run(run_dir: Path, method: str) -> tuple[list[dict], dict]:
    records = json.loads((run_dir / f"{method}.json").read_text(encoding="utf-8"))
    meta = json.loads((run_dir / f"{method}.meta.json").read_text(encoding="utf-8"))
    return records, meta


def check_run(run_dir: Path, method: str, questions: list[dict], preference: str) -> list[dict]:
    """The final file and its sidecar have the documented layout; returns the records."""
    records, meta = read_run(run_dir, method)
    assert isinstance(records, list)
    assert [r["index"] for r in records] == sorted(q["index"] for q in questions)
    by_index = {q["index"]: q["question"] for q in questions}
    for record in records:
        assert set(record) == RECORD_KEYS
        assert isinstance(record["index"], int)
        assert all(isinstance(record[k], str) for k in ("question", "preference", "response"))
        assert record["question"] == by_index[record["index"]]
        assert record["preference"] == preference
    assert isinstance(meta["config"], dict) and meta["config"]["max_new_tokens"] > 0
    assert isinstance(meta["generated_tokens"], int) and meta["generated_tokens"] > 0
    assert isinstance(meta["tokens_per_second"], (int, float)) and meta["tokens_per_second"] > 0
    assert not list(run_dir.glob(f"{method}.part*"))  # partial files are cleaned up
    return records


def tiny_run_args(model_dir: Path, data_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--model_name", str(model_dir), "--data_dir", str(data_dir), "--eval_data", "three",
        "--method", "all", "--max_new_tokens", "8", "--num_beams", "2",
        "--output_dir", str(output_dir), *extra,
    ]


PIRATE = "Answer like a pirate, with nautical words!"


@pytest.fixture(scope="module")
def no_system_mistral_dir(smol_tokenizer_dir, tmp_path_factory) -> Path:
    from conftest import build_tiny_model

    root = tmp_path_factory.mktemp("no_system")
    return build_tiny_model("mistral", smol_tokenizer_dir, root / "tiny-mistral-nosys", seed=3,
                            system_role=False)


@pytest.fixture(scope="module")
def runs(tiny_model_dirs, no_system_mistral_dir, data_dir, tmp_path_factory) -> dict:
    """Every `python main.py` run of this module, started together (each spends most of its
    time importing torch and transformers, which overlaps well), by name:
    ((return code, stderr), output dir)."""
    models = {**tiny_model_dirs, "mistral-no-system": no_system_mistral_dir}
    plans = {}
    for name, model_dir in models.items():
        out = tmp_path_factory.mktemp(f"out-{name}")
        plans[name] = (tiny_run_args(model_dir, data_dir, out), out)
    out = tmp_path_factory.mktemp("out-pirate")
    plans["pirate"] = (tiny_run_args(tiny_model_dirs["llama"], data_dir, out, "--method", "la",
                                     "--pref_text", PIRATE), out)
    out = tmp_path_factory.mktemp("out-embedded")
    # no --model_name, --data_dir or --eval_data: the embedded model on the demo questions
    plans["embedded"] = (["--method", "all", "--limit", "2", "--max_new_tokens", "16",
                          "--num_beams", "4", "--output_dir", str(out)], out)
    started = {}
    for name, (args, out) in plans.items():
        with open(out.with_suffix(".stderr"), "w") as stderr:  # a file: pipes could fill up
            started[name] = subprocess.Popen(
                [sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, env=main_env(),
                stdout=subprocess.DEVNULL, stderr=stderr,
            )
    finished = {}
    try:
        for name, process in started.items():
            process.wait(timeout=900)
            out = plans[name][1]
            finished[name] = ((process.returncode, out.with_suffix(".stderr").read_text()), out)
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
    return finished


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "mistral-no-system"])
def test_all_five_methods_write_sorted_complete_results(
    runs, tiny_model_dirs, no_system_mistral_dir, family
):
    model_dir = no_system_mistral_dir if family == "mistral-no-system" else tiny_model_dirs[family]
    result, out = runs[family]
    succeeded(family, result)
    run_dir = out / "creative" / model_dir.name / "three"
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        [f"{m}.json" for m in METHODS] + [f"{m}.meta.json" for m in METHODS]
    )
    for method in METHODS:
        check_run(run_dir, method, QUESTIONS, preference_sentence("creative"))
    _, meta = read_run(run_dir, "amulet")
    assert meta["config"]["method"] == "all"


def test_free_text_preference_writes_under_a_custom_slug(runs, tiny_model_dirs):
    result, out = runs["pirate"]
    succeeded("pirate", result)
    (slug_dir,) = list(out.iterdir())
    assert re.fullmatch(r"custom-answer-like-a-pirate-with-nautical-words-[0-9a-f]{8}",
                        slug_dir.name)
    run_dir = slug_dir / tiny_model_dirs["llama"].name / "three"
    assert sorted(p.name for p in run_dir.iterdir()) == ["la.json", "la.meta.json"]
    check_run(run_dir, "la", QUESTIONS, PIRATE)


def test_embedded_default_model_gives_text_for_all_five_methods(runs):
    result, out = runs["embedded"]
    succeeded("embedded", result)
    demo = json.loads((ROOT / "data" / "demo.json").read_text(encoding="utf-8"))[:2]
    run_dir = out / "creative" / "SmolLM2-135M-Instruct" / "demo"
    responses = {}
    for method in METHODS:
        records = check_run(run_dir, method, demo, preference_sentence("creative"))
        assert all(len(r["response"].split()) >= 3 for r in records), records
        responses[method] = [r["response"] for r in records]
    # the preference prompt changes what the model says, and Amulet departs from it
    assert responses["base"] != responses["pref"]
    assert responses["amulet"] != responses["pref"]


# ----- prompts ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_tokenizer(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_tokenizer_dir)


def leading_count(ids: list[int], token: int) -> int:
    count = 0
    while count < len(ids) and ids[count] == token:
        count += 1
    return count


@pytest.mark.parametrize("preference", [preference_sentence("verbose"), ""])
def test_prompt_has_one_bos_and_ends_with_the_assistant_header(smol_tokenizer, preference):
    ids = encode_prompt(smol_tokenizer, "Why is the sky blue?", preference, True)
    header = smol_tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert leading_count(ids, smol_tokenizer.bos_token_id) == 1
    assert header[0] == smol_tokenizer.bos_token_id and len(header) == 4
    assert ids[-len(header):] == header
    text = smol_tokenizer.decode(ids)
    assert text.count(system_text(preference)) == 1
    assert text.startswith("<|im_start|>system\n" + system_text(preference) + "<|im_end|>\n")


def test_prompt_has_one_bos_even_when_the_tokenizer_adds_one(smol_tokenizer_dir):
    """A Llama-style tokenizer adds a BOS of its own; the template already wrote one."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    tokenizer.add_bos_token = True
    bos = tokenizer.bos_token_id
    assert tokenizer("x")["input_ids"][0] == bos  # the tokenizer does add one
    ids = encode_prompt(tokenizer, "Why is the sky blue?", preference_sentence("formal"), True)
    assert leading_count(ids, bos) == 1
    # the reference code's prompt, kept as an option, does have the double BOS and no header
    reference = encode_prompt(tokenizer, "Why is the sky blue?", preference_sentence("formal"),
                              True, reference=True)
    assert leading_count(reference, bos) == 2
    assert reference[1:] == ids[: len(reference) - 1]


def test_base_system_text_ends_in_a_single_space():
    assert system_text("").endswith("advice. ") and not system_text("").endswith("  ")
    assert system_text("P.").endswith("advice. P.")


def test_template_without_system_role_gets_system_text_folded_into_the_user_turn(
    no_system_mistral_dir, smol_tokenizer
):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(no_system_mistral_dir)
    assert not template_accepts_system(tokenizer)
    assert template_accepts_system(smol_tokenizer)
    preference = preference_sentence("concise")
    ids = encode_prompt(tokenizer, "Why is the sky blue?", preference, False)
    expected = f"[INST] {system_text(preference)}\n\nWhy is the sky blue? [/INST]"
    assert tokenizer.decode(ids) == expected
    assert build_messages("Q", preference, False) == [
        {"role": "user", "content": f"{system_text(preference)}\n\nQ"}
    ]
