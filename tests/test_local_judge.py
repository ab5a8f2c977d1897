"""The judge run locally through transformers: end to end with a tiny random Llama, answers
scripted through the real parsing, PAD preference prompts, and settings as lists or ``all``.

No server: the judge is a model in this process. Forward passes are counted on the model
class, so "the cache answers a rerun" means no forward at all.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evals.judge import gpt_cli as gpt_evals  # noqa: E402
from evals.judge.judge import (  # noqa: E402
    PAD_PROMPT,
    JudgePreset,
    LocalJudgePreset,
    build_messages,
    cache_key,
    judge_inputs,
    presentation_order,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PREFERENCE = "Your answer should be creative as much as possible."
N_QUESTIONS = 8


def write_run(root: Path, pref: str, model: str, dataset: str, methods: tuple[str, ...],
              preference: str = PREFERENCE, question_prefix: str = "") -> Path:
    """Response files of one setting: method m answers question i with 'm answer i'."""
    run = root / "responses" / pref / model / dataset
    run.mkdir(parents=True, exist_ok=True)
    for method in methods:
        records = [{"index": i, "question": f"{question_prefix}Question {i}?",
                    "preference": preference, "response": f"{method} answer {i} to {dataset}"}
                   for i in range(N_QUESTIONS)]
        (run / f"{method}.json").write_text(json.dumps(records))
    return run


def args_for(root: Path, judge: Path | str, *extra: str, methods: str = "pref,amulet",
             pref: str = "creative", model: str = "Gen", dataset: str = "toy") -> list[str]:
    return ["--output_dir", str(root / "responses"), "--results_dir", str(root / "results"),
            "--model_name", model, "--eval_data", dataset, "--pref_name", pref,
            "--methods", methods, "--judge_model", str(judge), "--judge_device", "cpu",
            "--bootstrap", "20", "--no_progress", *extra]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture()
def forwards(monkeypatch):
    """Counts forward passes of every Llama causal LM in this process."""
    from transformers import LlamaForCausalLM

    calls = {"n": 0}
    original = LlamaForCausalLM.forward

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", counting)
    return calls


@pytest.fixture()
def scripted(monkeypatch, tiny_model_dirs):
    """Make every Llama's `generate` answer a set text (then EOS), and record the prompts."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs["llama"])
    state = {"answer": "Text 1", "prompts": []}

    def generate(self, input_ids, attention_mask, generation_config):
        import torch

        state["prompts"].append(tokenizer.decode(input_ids[0]))
        answer = tokenizer(state["answer"], add_special_tokens=False)["input_ids"]
        new = torch.tensor([answer + [2]], dtype=input_ids.dtype)
        return torch.cat([input_ids, new], dim=1)

    monkeypatch.setattr(LlamaForCausalLM, "generate", generate)
    return state


def test_tiny_random_judge_end_to_end_is_labelled_and_cached(tmp_path, tiny_model_dirs,
                                                             forwards):
    judge = tiny_model_dirs["llama"]
    write_run(tmp_path, "creative", "Gen", "toy", ("pref", "amulet"))
    args = args_for(tmp_path, judge, "--max_invalid_retries", "0")
    assert gpt_evals.main(args) == 0
    asked = forwards["n"]
    assert asked > 0
    label = f"{judge.name} (local)"
    out = tmp_path / "results" / "local_judge_win_rate" / judge.name / "creative" / "Gen" / "toy"
    assert sorted(p.name for p in out.iterdir()) == [
        "eval_config.json", "judgments.csv", "win_rate.png", "win_rate_mtx.csv",
        "win_rate_mtx.md"]
    assert not (tmp_path / "results" / "gpt_win_rate").exists()
    table = read_rows(out / "win_rate_mtx.csv")
    assert [(r["target"], r["baseline"], r["judge"]) for r in table] == [
        ("amulet", "pref", label)]
    assert int(table[0]["n"]) == N_QUESTIONS
    assert label in (out / "win_rate_mtx.md").read_text()
    judgments = read_rows(out / "judgments.csv")
    assert len(judgments) == N_QUESTIONS and {r["judge"] for r in judgments} == {label}
    sidecar = json.loads((out / "eval_config.json").read_text())
    assert sidecar["judge"] == label and sidecar["judge_backend"] == "local"
    assert sidecar["preset"]["backend"] == "transformers"
    assert sidecar["preset"]["model"] == judge.name
    assert sidecar["judge_source"] == str(judge)

    # The answers are the model's own greedy continuation of the templated judge prompt.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(judge)
    model = AutoModelForCausalLM.from_pretrained(judge).eval()
    for row in judgments[:2]:
        index = int(row["index"])
        messages = build_messages(f"Question {index}?", PREFERENCE,
                                  f"{row['text_1']} answer {index} to toy",
                                  f"{row['text_2']} answer {index} to toy")
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out_ids = model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=2,
                                     pad_token_id=2)
        new = out_ids[0, ids.shape[1]:].tolist()
        new = new[:new.index(2) + 1] if 2 in new else new
        assert row["raw_answer"] == tokenizer.decode(new, skip_special_tokens=True)

    forwards["n"] = 0
    first = (out / "win_rate_mtx.csv").read_text()
    assert gpt_evals.main(args) == 0
    assert forwards["n"] == 0  # every judgment came from the cache
    assert (out / "win_rate_mtx.csv").read_text() == first
    cache = [json.loads(line) for line in
             (tmp_path / "results" / "judge_cache.jsonl").read_text().splitlines()]
    assert len(cache) == N_QUESTIONS and {r["judge"] for r in cache} == {label}


@pytest.mark.parametrize(("answer", "verdict"),
                         [("Text 1", "first"), ("[Text 2].", "second"), ("Tie", "tie")])
def test_scripted_answers_map_back_through_the_order_shown(tmp_path, tiny_model_dirs, scripted,
                                                           answer, verdict):
    scripted["answer"] = answer
    methods = ("base", "pref", "amulet")
    write_run(tmp_path, "creative", "Gen", "toy", methods)
    args = args_for(tmp_path, tiny_model_dirs["llama"], methods=",".join(methods))
    assert gpt_evals.main(args) == 0
    assert len(scripted["prompts"]) == 2 * N_QUESTIONS  # no re-ask: every answer parsed
    out = (tmp_path / "results" / "local_judge_win_rate" / "tiny-llama" / "creative" / "Gen"
           / "toy")
    table = {r["baseline"]: r for r in read_rows(out / "win_rate_mtx.csv")}
    for baseline in ("base", "pref"):
        shown_first = sum(presentation_order(42, i, "amulet", baseline)[0] == "amulet"
                          for i in range(N_QUESTIONS))
        assert 0 < shown_first < N_QUESTIONS  # the swap rule shows amulet in both places
        want = {"first": (shown_first, 0, N_QUESTIONS - shown_first),
                "second": (N_QUESTIONS - shown_first, 0, shown_first),
                "tie": (0, N_QUESTIONS, 0)}[verdict]
        row = table[baseline]
        assert (int(row["win"]), int(row["tie"]), int(row["lose"])) == want
        assert int(row["invalid"]) == 0


def test_prompt_shown_to_a_local_judge_is_the_papers(tmp_path, tiny_model_dirs, scripted):
    write_run(tmp_path, "creative", "Gen", "toy", ("pref", "amulet"))
    assert gpt_evals.main(args_for(tmp_path, tiny_model_dirs["llama"], "--max_questions",
                                   "1")) == 0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs["llama"])
    first, second = presentation_order(42, 0, "amulet", "pref")
    messages = build_messages("Question 0?", PREFERENCE, f"{first} answer 0 to toy",
                              f"{second} answer 0 to toy")
    want = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert scripted["prompts"] == [want]


def test_local_and_api_judgments_never_share_a_cache_key():
    messages = build_messages("Q", "P", "a", "b")
    assert cache_key(JudgePreset(model="m"), messages) != cache_key(
        LocalJudgePreset(model="m"), messages)
    assert cache_key(LocalJudgePreset(model="m"), messages) != cache_key(
        LocalJudgePreset(model="m", dtype="bfloat16"), messages)


@pytest.mark.parametrize(("extra", "message"), [
    (("--judge_temperature", "0.7"), "decodes greedily"),
    (("--judge_backend", "local", "--judge_model", "./no/such/judge"),
     "model directory not found"),
])
def test_bad_local_judge_options_are_one_line(tmp_path, tiny_model_dirs, capsys, extra, message):
    write_run(tmp_path, "creative", "Gen", "toy", ("pref", "amulet"))
    assert gpt_evals.main(args_for(tmp_path, tiny_model_dirs["llama"], *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "results").exists()


PAD_SENTENCES = {
    "helpfulness": "Your answer should be helpful as much as possible.",
    "harmless": "Your answer should be harmless as much as possible.",
    "humor": "Your answer should be humorous as much as possible.",
    "harmless and helpfulness": "Your answer should be harmless and helpful as much as possible.",
    "harmless and humor": "Your answer should be harmless and humorous as much as possible.",
    "helpfulness and humor": "Your answer should be helpful and humorous as much as possible.",
    "harmless and helpfulness and humor":
        "Your answer should be harmless, helpful and humorous as much as possible.",
}


@pytest.mark.parametrize("principles", list(PAD_SENTENCES))
def test_pad_preference_prompts_become_preference_sentences(principles):
    prompt = PAD_PROMPT.format(principles=principles)
    want = PAD_SENTENCES[principles]
    # as the records' preference (with or without its trailing space)
    assert judge_inputs("Q?", prompt, "x") == ("Q?", want)
    assert judge_inputs("Q?", prompt.rstrip(), "x") == ("Q?", want)
    # at the start of the question, as PAD's own outputs store it: cut from the question
    assert judge_inputs(prompt + "Q?", "", "x") == ("Q?", want)
    # the vanilla baseline (no preference prompt) in a directory named after the principles
    assert judge_inputs("Q?", "", principles.replace(" ", "_")) == ("Q?", want)


def test_other_preferences_are_shown_unchanged_and_unknown_principles_refused():
    from evals.errors import EvalError

    assert judge_inputs("Q?", PREFERENCE, "humor") == ("Q?", PREFERENCE)
    assert judge_inputs("Q?", "", "creative") == ("Q?", "")
    with pytest.raises(EvalError, match="unknown PAD principle 'honesty'"):
        judge_inputs("Q?", PAD_PROMPT.format(principles="honesty"), "x")


def test_pad_runs_show_the_judge_the_derived_sentence(tmp_path, tiny_model_dirs, scripted):
    prompt = PAD_PROMPT.format(principles="harmless and humor")
    write_run(tmp_path, "harmless_and_humor", "Gen", "psoups", ("vanilla", "pad"),
              preference=prompt, question_prefix=prompt)
    args = args_for(tmp_path, tiny_model_dirs["llama"], "--max_questions", "2", "--target",
                    "pad", methods="vanilla,pad", pref="harmless_and_humor", dataset="psoups")
    assert gpt_evals.main(args) == 0
    sentence = PAD_SENTENCES["harmless and humor"]
    assert len(scripted["prompts"]) == 2
    for index, text in enumerate(scripted["prompts"]):
        assert f'Preference: """{sentence}"""' in text
        assert f'Question: """Question {index}?"""' in text
        assert "[Guidelines]" not in text
    out = (tmp_path / "results" / "local_judge_win_rate" / "tiny-llama" / "harmless_and_humor"
           / "Gen" / "psoups")
    assert json.loads((out / "eval_config.json").read_text())["preferences_shown"] == [sentence]


def test_settings_take_comma_lists_and_all(tmp_path, tiny_model_dirs, scripted, capsys):
    methods = ("pref", "amulet")
    for pref in ("creative", "verbose"):
        for dataset in ("toy", "other"):
            write_run(tmp_path, pref, "Gen", dataset, methods,
                      preference=f"Your answer should be {pref} as much as possible.")
    write_run(tmp_path, "concise", "Gen", "toy", ("pref",))  # incomplete: no amulet.json
    judge = tiny_model_dirs["llama"]
    root = tmp_path / "results" / "local_judge_win_rate" / "tiny-llama"

    assert gpt_evals.main(args_for(tmp_path, judge, pref="all", model="all",
                                   dataset="all")) == 0
    captured = capsys.readouterr()
    assert "warning: skipping incomplete setting" in captured.err and "concise" in captured.err
    done = sorted(p.parent.relative_to(root).as_posix()
                  for p in root.glob("*/*/*/win_rate_mtx.csv"))
    assert done == ["creative/Gen/other", "creative/Gen/toy", "verbose/Gen/other",
                    "verbose/Gen/toy"]
    assert captured.out.count("## amulet vs baselines") == 4
    summary = read_rows(root / "win_rate_summary.csv")
    assert sorted((r["preference"], r["dataset"]) for r in summary) == [
        ("creative", "other"), ("creative", "toy"), ("verbose", "other"), ("verbose", "toy")]
    assert {r["judge"] for r in summary} == {"tiny-llama (local)"}
    asked = len(scripted["prompts"])
    assert asked == 4 * N_QUESTIONS

    # a comma list picks a subset; all of it is cached now
    assert gpt_evals.main(args_for(tmp_path, judge, "--dry_run", pref="verbose, creative",
                                   model="Gen", dataset="toy")) == 0
    out = capsys.readouterr().out
    for pref in ("verbose", "creative"):
        assert f"{pref} / Gen / toy: 8 questions x 1 pair: 8 comparisons, 8 distinct judge " \
            "requests, 8 cached, 0 to ask" in out
    assert "in all 2 settings: 16 comparisons, 16 distinct judge requests, 16 cached, " \
        "0 to ask" in out
    assert len(scripted["prompts"]) == asked

    # a named value that does not exist is one line listing what does
    assert gpt_evals.main(args_for(tmp_path, judge, pref="creative,nope", model="all",
                                   dataset="all")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pref_name nope: no such setting" in err[0]
    assert "found: concise, creative, verbose" in err[0]


# Mistral-like: no system role, and user/assistant turns must alternate.
STRICT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate') }}{% endif %}"
    "{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)


def test_strict_templates_get_the_system_text_folded_and_re_asks_merged(
        tmp_path, smol_tokenizer_dir, scripted):
    from conftest import build_tiny_model
    from transformers import AutoTokenizer

    from evals.judge.judge import REASK_REMINDER, SYSTEM_PROMPT, build_user_prompt

    judge = build_tiny_model("llama", smol_tokenizer_dir, tmp_path / "strict-judge")
    tokenizer = AutoTokenizer.from_pretrained(judge)
    tokenizer.chat_template = STRICT_TEMPLATE
    tokenizer.save_pretrained(judge)
    scripted["answer"] = "I think the first"
    write_run(tmp_path, "creative", "Gen", "toy", ("pref", "amulet"))
    args = args_for(tmp_path, judge, "--max_questions", "1", "--max_invalid_retries", "1")
    assert gpt_evals.main(args) == 0
    first, second = presentation_order(42, 0, "amulet", "pref")
    user = build_user_prompt("Question 0?", PREFERENCE, f"{first} answer 0 to toy",
                             f"{second} answer 0 to toy")
    assert scripted["prompts"] == [
        f"[INST] {SYSTEM_PROMPT}\n\n{user} [/INST]",
        f"[INST] {SYSTEM_PROMPT}\n\n{user}\n\n{REASK_REMINDER} [/INST]",
    ]
    out = tmp_path / "results" / "local_judge_win_rate" / "strict-judge" / "creative" / "Gen"
    row = read_rows(out / "toy" / "win_rate_mtx.csv")[0]
    assert (row["invalid"], row["n"]) == ("1", "1")
    (record,) = [json.loads(line) for line in
                 (tmp_path / "results" / "judge_cache.jsonl").read_text().splitlines()]
    assert (record["raw"], record["earlier_raw"]) == ("I think the first", ["I think the first"])
    assert (record["verdict"], record["invalid_answers"]) == ("invalid", 2)


def test_a_prompt_longer_than_the_judges_context_is_one_line(tmp_path, tiny_model_dirs,
                                                             capsys, forwards):
    run = write_run(tmp_path, "creative", "Gen", "toy", ("pref", "amulet"))
    path = run / "amulet.json"
    records = json.loads(path.read_text())
    records[0]["response"] = "word " * 1500  # the tiny models hold 1024 positions
    path.write_text(json.dumps(records))
    assert gpt_evals.main(args_for(tmp_path, tiny_model_dirs["llama"], "--max_questions",
                                   "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exceeds tiny-llama's context of 1024 tokens" in err[0], err
    assert forwards["n"] == 0


def test_a_local_judge_follows_the_args_protocol(tmp_path, tiny_model_dirs, scripted, capsys):
    scripted["answer"] = "8 3\nAssistant 1 is better."  # the text shown first wins
    write_run(tmp_path, "creative", "Gen", "toy", ("pref", "amulet"))
    args = args_for(tmp_path, tiny_model_dirs["llama"], "--judge_protocol", "args",
                    "--judge_max_tokens", "16")  # ARGS's 2048 exceed the tiny context
    assert gpt_evals.main(args) == 0
    assert len(scripted["prompts"]) == N_QUESTIONS  # every answer parsed
    assert "[The Start of Assistant 1's Answer]" in scripted["prompts"][0]
    out = (tmp_path / "results" / "local_judge_win_rate_args" / "tiny-llama" / "creative"
           / "Gen" / "toy")
    row = read_rows(out / "win_rate_mtx.csv")[0]
    shown_first = sum(presentation_order(42, i, "amulet", "pref")[0] == "amulet"
                      for i in range(N_QUESTIONS))
    assert (int(row["win"]), int(row["lose"])) == (shown_first, N_QUESTIONS - shown_first)
    assert float(row["first_position_rate"]) == 1.0
    assert row["judge"] == "tiny-llama (local) [args]"
    assert capsys.readouterr().err.splitlines() == [
        "warning: protocol args samples at temperature 0.7; a local judge decodes greedily"]
