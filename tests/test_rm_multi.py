"""Several scorers in one rm_evals run: tiny random models saved to temporary directories.

Scorers: a one-label GPT-2 reward model and a three-label Llama classifier (labels
``no_humor``, ``humor``, ``neutral``), both with tokenizers without a chat template (so they
read the HH-RLHF text), and the native ArmoRM (chat template). Every table value is checked
against a forward pass of the model itself on one unpadded conversation.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rm_helpers import EOH, EOT, PREFERENCE, SOH, build_tokenizer, tiny_llama_config  # noqa: E402

from evals.scoring import indicators, reward_model  # noqa: E402
from evals.scoring import rm_cli as rm_evals  # noqa: E402
from evals.scoring.armorm import ArmoRMForScoring  # noqa: E402
from evals.scoring.scoring_inputs import (  # noqa: E402
    extract_args_pad_response,
    read_args_pad_file,
    resolve_prompt_mode,
    scorer_prompt,
    split_pad_prompt,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAD_PROMPT = ("[Guidelines] Your task is to generate response by considering the following "
              "principle. [Principles] {principles} [Instruction] ")
PAD_SETS = ("helpfulness", "harmless", "humor", "harmless and helpfulness", "harmless and humor",
            "helpfulness and humor", "harmless and helpfulness and humor")
QUESTIONS = ["What is a good way to learn to cook pasta at home?", "How do I boil water?",
             "Name one pasta shape."]
TEXTS = {
    "base": ["Boil water and cook.", "Heat it.", "Penne."],
    "pref": ["Imagine noodles that sing!", "Heat water in a pot until it bubbles well.",
             "Penne, bright as a summer morning."],
    "amulet": ["Imagine a kitchen where every noodle sings, creative and bright.",
               "Boil it.", "Fusilli, a creative spiral of joy and summer. " * 3],
}
METHODS = tuple(TEXTS)
HUMOR_LABELS = {0: "no_humor", 1: "humor", 2: "neutral"}


@pytest.fixture(scope="module")
def scorer_dirs(tmp_path_factory) -> dict[str, Path]:
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaForSequenceClassification,
    )

    root = tmp_path_factory.mktemp("scorers")
    torch.manual_seed(1)
    gpt2_dir = root / "tiny-gpt2-rm"
    tokenizer = build_tokenizer(gpt2_dir, chat_template=False)
    GPT2ForSequenceClassification(GPT2Config(
        vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=4,
        num_labels=1, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )).save_pretrained(gpt2_dir)

    humor_dir = root / "tiny-humor"
    build_tokenizer(humor_dir, chat_template=False)
    config = tiny_llama_config(tokenizer, num_labels=3, id2label=HUMOR_LABELS,
                               label2id={v: k for k, v in HUMOR_LABELS.items()})
    LlamaForSequenceClassification(config).save_pretrained(humor_dir)

    armo_dir = root / "tiny-armorm"
    build_tokenizer(armo_dir)
    pattern = tokenizer.encode(f"{EOT}{SOH}assistant{EOH}", add_special_tokens=False)
    armo = ArmoRMForScoring(tiny_llama_config(
        tokenizer, num_objectives=19, gating_hidden_dim=16, gating_n_hidden=2,
        gating_temperature=10, gating_token_pattern=pattern,
    ))
    with torch.no_grad():  # a gate far from uniform, so the gated score is not a plain mean
        for layer in armo.gating.layers:
            layer.weight.normal_(0.0, 1.0)
    armo.save_pretrained(armo_dir)
    return {"gpt2": gpt2_dir, "humor": humor_dir, "armorm": armo_dir}


def write_run(root: Path, texts=TEXTS, preference=PREFERENCE, meta: dict | None = None) -> Path:
    run = root / "creative" / "Tiny-Gen" / "toy"
    run.mkdir(parents=True, exist_ok=True)
    for method, responses in texts.items():
        records = [{"index": i, "question": QUESTIONS[i], "preference": preference,
                    "response": r} for i, r in enumerate(responses)]
        (run / f"{method}.json").write_text(json.dumps(records))
        if meta is not None:
            (run / f"{method}.meta.json").write_text(json.dumps({"config": meta}))
    return run


def base_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--output_dir", str(tmp_path / "responses"), "--results_dir", str(tmp_path / "results"),
            "--methods", ",".join(METHODS), "--pref_name", "creative", "--model_name", "Tiny-Gen",
            "--eval_data", "toy", "--device", "cpu", "--batch_size", "4", "--no_progress", *extra]


def scorers(dirs: dict[str, Path]) -> list[str]:
    return ["--scorer", str(dirs["gpt2"]), "--scorer", f"{dirs['humor']}:HUMOR",
            "--scorer", f"{dirs['armorm']}:ultrafeedback-instruction_following",
            "--scorer", f"{dirs['armorm']}:10", "--scorer", f"{dirs['armorm']}:score"]


def read_table(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["method"]: row for row in csv.DictReader(handle)}


class Direct:
    """Reference numbers: each conversation alone, unpadded, through the model itself."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tok = {k: AutoTokenizer.from_pretrained(d) for k, d in dirs.items()}
        self.models = {k: AutoModelForSequenceClassification.from_pretrained(dirs[k]).eval()
                       for k in ("gpt2", "humor")}
        self.models["armorm"] = ArmoRMForScoring.from_pretrained(dirs["armorm"]).eval()

    def outputs(self, kind: str, prompt: str, response: str):
        tok = self.tok[kind]
        if kind == "armorm":
            messages = [{"role": "user", "content": prompt},
                        {"role": "assistant", "content": response}]
            ids = tok(tok.apply_chat_template(messages, tokenize=False),
                      add_special_tokens=False)["input_ids"]
        else:
            ids = tok(f"\n\nHuman: {prompt}\n\nAssistant: {response}")["input_ids"]
        with torch.inference_mode():
            return self.models[kind](input_ids=torch.tensor([ids]))

    def value(self, column: str, prompt: str, response: str) -> float:
        if column == "reward":
            return self.outputs("gpt2", prompt, response).logits[0, 0].item()
        if column == "humor":
            logits = self.outputs("humor", prompt, response).logits[0]
            return torch.softmax(logits.double(), dim=-1)[1].item()
        out = self.outputs("armorm", prompt, response)
        return {"if": out.rewards[0, 6], "safe": out.rewards[0, 10], "score": out.score[0]}[
            column].item()


COLUMNS = {"tiny-gpt2-rm:reward": "reward", "tiny-humor:humor": "humor",
           "tiny-armorm:ultrafeedback-instruction_following": "if",
           "tiny-armorm:beavertails-is_safe": "safe", "tiny-armorm:score": "score"}


def test_three_kinds_of_scorer_in_one_table_equal_direct_forwards(tmp_path, scorer_dirs):
    write_run(tmp_path / "responses", meta={"max_new_tokens": 12,
                                            "model_name": str(scorer_dirs["gpt2"])})
    assert rm_evals.main(base_args(tmp_path, *scorers(scorer_dirs))) == 0
    run_dir = tmp_path / "results" / "rm_score" / "creative" / "Tiny-Gen" / "toy"
    table = read_table(run_dir / "rm_table.csv")
    direct = Direct(scorer_dirs)
    for method in METHODS:
        for column, kind in COLUMNS.items():
            want = sum(direct.value(kind, f"{q} {PREFERENCE}", r)
                       for q, r in zip(QUESTIONS, TEXTS[method], strict=True)) / 3
            assert float(table[method][column]) == pytest.approx(want, abs=1e-5), column
        probability = float(table[method]["tiny-humor:humor"])
        assert 0.0 < probability < 1.0
    # The indicators, from evals.scoring.indicators on the same texts; token counts by the
    # generating model's tokenizer named in the .meta.json sidecar, budget 12 with slack 2.
    tok = direct.tok["gpt2"]
    for method in METHODS:
        texts = TEXTS[method]
        counts = [len(tok.encode(t, add_special_tokens=False)) for t in texts]
        row = table[method]
        assert float(row["len_tokens"]) == pytest.approx(sum(counts) / 3)
        assert float(row["hit_max_new_tokens"]) == pytest.approx(
            sum(c >= 10 for c in counts) / 3)
        assert float(row["distinct_2"]) == pytest.approx(indicators.corpus_distinct_n(texts, 2))
        assert float(row["rep_3"]) == pytest.approx(
            sum(indicators.rep_n(t, 3) for t in texts) / 3)
        assert float(row["len_words"]) == pytest.approx(
            sum(indicators.length_in_words(t) for t in texts) / 3)
    assert {row["hit_max_new_tokens"] for row in table.values()} != {"0.0"}  # amulet is long
    meta = json.loads((run_dir / "rm_table.meta.json").read_text())
    assert [s["column"] for s in meta["scorers"]] == list(COLUMNS)
    assert [s["head_kind"] for s in meta["scorers"]] == ["logit", "prob", "reward", "reward",
                                                         "score"]
    assert [s["input_format"] for s in meta["scorers"]] == ["hh_text"] * 2 + ["chat_template"] * 3
    assert meta["prompt_mode"] == {"requested": "auto",
                                   "resolved": {"creative/Tiny-Gen/toy": "question_and_preference"}}
    assert meta["indicators"]["per_run"]["creative/Tiny-Gen/toy"]["base"]["max_new_tokens"] == 12
    text = (run_dir / "rm_table.md").read_text()
    assert "not quality scores" in text and "Indicator columns" in text
    for directory in scorer_dirs.values():
        assert str(directory) in text
    # one cache file per scorer model, each response scored once
    for slug in ("tiny-gpt2-rm", "tiny-humor", "tiny-armorm"):
        assert len((run_dir / f"{slug}.scores.jsonl").read_text().splitlines()) == 9


def test_rerun_and_a_new_head_of_a_scored_model_score_nothing(tmp_path, scorer_dirs,
                                                               monkeypatch):
    write_run(tmp_path / "responses")
    args = base_args(tmp_path, *scorers(scorer_dirs))
    assert rm_evals.main(args) == 0
    run_dir = tmp_path / "results" / "rm_score" / "creative" / "Tiny-Gen" / "toy"
    first = read_table(run_dir / "rm_table.csv")
    forwards = []
    real = reward_model.score_rows
    monkeypatch.setattr(reward_model, "score_rows",
                        lambda rm, rows: forwards.append(len(rows)) or real(rm, rows))

    def no_weights(*_args, **_kwargs):
        raise AssertionError("a fully cached rerun must not load any model")

    monkeypatch.setattr(reward_model, "_load_weights", no_weights)
    more = args + ["--scorer", f"{scorer_dirs['armorm']}:3",
                   "--scorer", f"{scorer_dirs['humor']}:logit:no_humor"]
    assert rm_evals.main(more) == 0
    assert forwards == []
    again = read_table(run_dir / "rm_table.csv")
    for method in METHODS:
        for column in COLUMNS:
            assert again[method][column] == first[method][column]
        assert "tiny-armorm:helpsteer-complexity" in again[method]
        assert "tiny-humor:logit_no_humor" in again[method]
    monkeypatch.undo()
    # A changed prompt mode changes the token ids, so it is scored anew, once.
    monkeypatch.setattr(reward_model, "score_rows",
                        lambda rm, rows: forwards.append(len(rows)) or real(rm, rows))
    assert rm_evals.main(base_args(tmp_path, "--scorer", str(scorer_dirs["gpt2"]),
                                   "--scorer_prompt", "question")) == 0
    assert sum(forwards) == 9


def test_pad_preference_prompt_is_cut_before_scoring(tmp_path, scorer_dirs):
    pad_prompt = PAD_PROMPT.format(principles="harmless and humor")
    write_run(tmp_path / "responses", preference=pad_prompt)
    assert rm_evals.main(base_args(tmp_path, "--scorer", str(scorer_dirs["gpt2"]),
                                   "--scorer", f"{scorer_dirs['armorm']}:0")) == 0
    run_dir = tmp_path / "results" / "rm_score" / "creative" / "Tiny-Gen" / "toy"
    table = read_table(run_dir / "rm_table.csv")
    meta = json.loads((run_dir / "rm_table.meta.json").read_text())
    assert meta["prompt_mode"]["resolved"] == {"creative/Tiny-Gen/toy": "question"}
    direct = Direct(scorer_dirs)
    for method in METHODS:
        want = sum(direct.value("reward", q, r) for q, r in zip(QUESTIONS, TEXTS[method],
                                                                 strict=True)) / 3
        assert float(table[method]["tiny-gpt2-rm:reward"]) == pytest.approx(want, abs=1e-5)
        with_prompt = sum(direct.value("reward", f"{q} {pad_prompt}", r)
                          for q, r in zip(QUESTIONS, TEXTS[method], strict=True)) / 3
        assert with_prompt != pytest.approx(want, abs=1e-4)  # the cut changes the number
    assert "the question alone" in (run_dir / "rm_table.md").read_text()


@pytest.mark.parametrize("principles", PAD_SETS)
def test_pad_prompt_split_on_the_exact_prompt(principles):
    question = "What is the capital of France? [Instruction] keep this."
    prompt = PAD_PROMPT.format(principles=principles)
    assert split_pad_prompt(prompt + question) == (principles, question)
    assert scorer_prompt(prompt + question, "", "question") == question
    assert scorer_prompt(question, prompt, "question") == question
    assert resolve_prompt_mode("auto", [prompt]) == "question"
    assert resolve_prompt_mode("auto", [principles]) == "question"
    assert resolve_prompt_mode("auto", [PREFERENCE]) == "question_and_preference"
    assert scorer_prompt(question, PREFERENCE, "question_and_preference") == (
        f"{question} {PREFERENCE}")


PAD_Q = "How do I boil water?"


@pytest.mark.parametrize(
    ("prompt", "result", "response"),
    [
        # PAD under a chat template, special tokens skipped: the whole conversation and more
        (PAD_PROMPT.format(principles="helpfulness") + PAD_Q,
         "user\n\n" + PAD_PROMPT.format(principles="helpfulness") + PAD_Q
         + "assistant\n\nPut it in a pot, heat it.user\n\nThanks!assistant\n\nWelcome.",
         "Put it in a pot, heat it."),
        # the same with a system turn before, and the response ending on the word "user"
        (PAD_Q, "system\n\nBe kind.user\n\n" + PAD_Q + "assistant\n\nAsk another user"
         "assistant\n\nMore text", "Ask another user"),
        # special tokens kept: cut at the first end-of-turn marker
        (PAD_Q, f"{SOH}user{EOH}\n\n{PAD_Q}{EOT}{SOH}assistant{EOH}\n\nHeat it.{EOT}{SOH}user",
         "Heat it."),
        # the model ended its turn at once
        (PAD_Q, "user\n\n" + PAD_Q + "assistant\n\nuser\n\nHi", ""),
        # the prompt did not survive decoding exactly: the turn headers still tell
        (PAD_Q + "  ", "user\n\n" + PAD_Q + "assistant\n\nHeat it.user\n\nOk", "Heat it."),
        # ARGS: raw text prompt removed, continuation into the next HH turn
        ("\n\nHuman: " + PAD_Q + "\n\nAssistant:", " Use a kettle.\n\nHuman: and then?",
         "Use a kettle."),
    ],
    ids=["pad-chat", "system-turn", "special-tokens-kept", "empty", "prompt-not-found",
         "args-raw"],
)
def test_args_pad_response_extraction(prompt, result, response):
    assert extract_args_pad_response(prompt, result) == response


def write_args_pad(path: Path, prompt_prefix: str, responses: list[str]) -> Path:
    records = []
    for question, response in zip(QUESTIONS, responses, strict=True):
        prompt = prompt_prefix + question
        result = f"user\n\n{prompt}assistant\n\n{response}user\n\nAnd more?assistant\n\nNo."
        records.append({"prompt": prompt, "result": result, "response": prompt + result,
                        "elapsed": 1.0, "method": str(path.with_suffix(""))})
    path.write_text(json.dumps(records))
    return path


def test_args_pad_output_files_are_scored_like_responses(tmp_path, scorer_dirs):
    pad_prefix = PAD_PROMPT.format(principles="humor")
    vanilla = write_args_pad(tmp_path / "psoups_0.jsonl", "", TEXTS["base"])
    pad = write_args_pad(tmp_path / "psoups_1.jsonl", pad_prefix, TEXTS["pref"])
    records = read_args_pad_file(pad)
    assert [r["response"] for r in records] == TEXTS["pref"]
    assert [r["question"] for r in records] == QUESTIONS
    assert {r["preference"] for r in records} == {"humor"}
    args = ["--results_dir", str(tmp_path / "results"), "--device", "cpu", "--no_progress",
            "--input_format", "args_pad", "--input_file", f"vanilla={vanilla}",
            "--input_file", str(pad), "--scorer", f"{scorer_dirs['humor']}:humor",
            "--length_tokenizer", str(scorer_dirs["gpt2"]), "--max_new_tokens", "8"]
    assert rm_evals.main(args) == 0
    run_dir = tmp_path / "results" / "rm_score" / "external" / "args_pad" / "args_pad"
    table = read_table(run_dir / "rm_table.csv")
    assert list(table) == ["vanilla", "psoups_1"]
    direct = Direct(scorer_dirs)
    for method, texts in (("vanilla", TEXTS["base"]), ("psoups_1", TEXTS["pref"])):
        want = sum(direct.value("humor", q, r) for q, r in zip(QUESTIONS, texts,
                                                                strict=True)) / 3
        assert float(table[method]["tiny-humor:humor"]) == pytest.approx(want, abs=1e-6)
        counts = [len(direct.tok["gpt2"].encode(t, add_special_tokens=False)) for t in texts]
        assert float(table[method]["hit_max_new_tokens"]) == pytest.approx(
            sum(c >= 8 - 2 for c in counts) / 3)
    meta = json.loads((run_dir / "rm_table.meta.json").read_text())
    assert meta["prompt_mode"]["resolved"] == {"external/args_pad/args_pad": "question"}
    # files holding different questions are refused
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps(json.loads(pad.read_text())[:2]))
    assert rm_evals.main(args + ["--input_file", f"short={short}"]) == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{humor}:laughter", "'laughter' is not one of the model's: no_humor, humor, neutral"),
        ("{humor}", "has 3 labels; name one"),
        ("{humor}:3", "label 3 is out of range"),
        ("{armorm}:19", "head 19 is out of range: the model has 19"),
        ("{armorm}:helpfulness", "'helpfulness' is not one of the model's"),
        ("{gpt2}:score", "needs an ArmoRM-like model"),
        ("{gpt2}:", "want NAME_OR_PATH or NAME_OR_PATH:HEAD"),
    ],
    ids=["unknown-label", "no-label", "label-index", "head-index", "head-name", "score-on-rm",
         "empty-head"],
)
def test_bad_scorer_spec_is_one_line_exit_2_before_scoring(tmp_path, scorer_dirs, capsys, spec,
                                                           message):
    write_run(tmp_path / "responses")
    given = spec.format(**{k: str(v) for k, v in scorer_dirs.items()})
    args = base_args(tmp_path, "--scorer", str(scorer_dirs["gpt2"]), "--scorer", given)
    assert rm_evals.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "results").exists()  # nothing scored, nothing written


def test_the_same_column_twice_and_a_lone_input_format_are_usage_errors(tmp_path, scorer_dirs,
                                                                       capsys):
    write_run(tmp_path / "responses")
    armo = str(scorer_dirs["armorm"])
    assert rm_evals.main(base_args(tmp_path, "--scorer", f"{armo}:6",
                                   "--scorer", f"{armo}:ultrafeedback-instruction_following")) == 2
    assert "given more than once" in capsys.readouterr().err
    assert rm_evals.main(base_args(tmp_path, "--input_format", "args_pad")) == 2
    assert "needs --input_file" in capsys.readouterr().err


def test_indicators_can_be_switched_off(tmp_path, scorer_dirs):
    write_run(tmp_path / "responses")
    assert rm_evals.main(base_args(tmp_path, "--scorer", str(scorer_dirs["gpt2"]),
                                   "--no_indicators")) == 0
    run_dir = tmp_path / "results" / "rm_score" / "creative" / "Tiny-Gen" / "toy"
    header = (run_dir / "rm_table.csv").read_text().splitlines()[0]
    assert header == "method,tiny-gpt2-rm:reward"
    assert json.loads((run_dir / "rm_table.meta.json").read_text())["indicators"] is None


def test_grid_table_has_one_row_per_setting_and_method(tmp_path, scorer_dirs):
    write_run(tmp_path / "responses")
    other = tmp_path / "responses" / "verbose" / "Tiny-Gen" / "toy"
    other.mkdir(parents=True)
    for method in METHODS:
        records = [{"index": i, "question": QUESTIONS[i], "preference": "Be verbose.",
                    "response": r} for i, r in enumerate(TEXTS["base"])]
        (other / f"{method}.json").write_text(json.dumps(records))
    args = ["--output_dir", str(tmp_path / "responses"), "--results_dir",
            str(tmp_path / "results"), "--methods", ",".join(METHODS), "--device", "cpu",
            "--no_progress", "--scorer", str(scorer_dirs["gpt2"]),
            "--scorer", f"{scorer_dirs['humor']}:1"]
    assert rm_evals.main(args) == 0
    root = tmp_path / "results" / "rm_score"
    with open(root / "rm_table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["preference"], r["method"]) for r in rows] == [
        (p, m) for p in ("creative", "verbose") for m in METHODS]
    for row in rows:
        per_run = read_table(root / row["preference"] / "Tiny-Gen" / "toy" / "rm_table.csv")
        assert row["tiny-humor:humor"] == per_run[row["method"]]["tiny-humor:humor"]
    assert (root / "tiny-gpt2-rm_logit0_summary.csv").is_file()
    assert (root / "tiny-humor_prob1_summary.csv").is_file()
    # verbose: every method answered the same texts, so all tie on every column
    verbose = [r for r in rows if r["preference"] == "verbose"]
    assert len({r["tiny-gpt2-rm:reward"] for r in verbose}) == 1


def test_softmax_probability_matches_torch():
    from evals.scoring.scorers import softmax_at

    logits = [3.0, -1.5, 200.0]
    want = torch.softmax(torch.tensor(logits, dtype=torch.float64), dim=0)
    for k in range(3):
        assert softmax_at(logits, k) == pytest.approx(want[k].item(), rel=1e-12, abs=1e-300)
    assert not math.isnan(softmax_at([1000.0, -1000.0], 1))


@pytest.mark.parametrize("module_name", ["evals.scoring.scorers", "evals.scoring.scoring_inputs",
                                         "evals.scoring.rm_table", "evals.scoring.public_scoring",
                                         "evals.scoring.loglik_scorer", "evals.judge.gpt_cli"])
def test_doctests_of_the_new_modules_pass(module_name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module_name))
    assert result.failed == 0 and result.attempted > 0


def test_script_exits_2_with_one_line_for_an_unknown_label(tmp_path, scorer_dirs):
    import os
    import subprocess

    write_run(tmp_path / "responses")
    done = subprocess.run(
        [sys.executable, str(ROOT / "evals" / "rm_evals.py"),
         *base_args(tmp_path, "--scorer", f"{scorer_dirs['humor']}:laughter")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "'laughter' is not one of the model's" in lines[0]
