"""The public codes' output files scored as their own ``measure_reward.py`` scores them.

ARGS's records hold an HH dialogue in ``prompt``: scored as ``prompt + response`` without a
second wrapping, the response cut at ``human:`` in any case. ``--scoring args`` and
``--scoring pad`` build the very text of ARGS's and PAD's scripts; every expected number below
is a forward pass of the model itself on a text written out by hand from those scripts' rules.
Scorers: a tiny GPT-2 reward model and a two-label humour classifier (no chat template) and a
tiny ArmoRM (chat template), random weights.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rm_helpers import EOH, EOT, SOH, build_tokenizer, tiny_llama_config  # noqa: E402

from evals.scoring import public_scoring  # noqa: E402
from evals.scoring import rm_cli as rm_evals  # noqa: E402
from evals.scoring.armorm import ArmoRMForScoring  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAD_PROMPT = ("[Guidelines] Your task is to generate response by considering the following "
              "principle. [Principles] humor [Instruction] ")
QUESTIONS = ["What is a good way to learn to cook pasta at home?", "How do I boil water?",
             "Name one pasta shape."]
LONG = "Imagine a kitchen where every noodle sings, creative and bright. " * 40
VERY_LONG = LONG * 2
RESPONSES = {"vanilla": ["Boil water and cook.", "Heat it.", VERY_LONG],
             "pad": ["Imagine noodles that sing!", LONG, "Penne, bright as a summer morning."]}
TAIL = "user\n\nAnd more?assistant\n\nNo."


@pytest.fixture(scope="module")
def scorer_dirs(tmp_path_factory) -> dict[str, Path]:
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaForSequenceClassification,
    )

    root = tmp_path_factory.mktemp("public-scorers")
    torch.manual_seed(3)
    gpt2_dir = root / "tiny-gpt2-rm"
    tokenizer = build_tokenizer(gpt2_dir, chat_template=False)
    GPT2ForSequenceClassification(GPT2Config(
        vocab_size=len(tokenizer), n_positions=1100, n_embd=32, n_layer=2, n_head=4,
        num_labels=1, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )).save_pretrained(gpt2_dir)
    humor_dir = root / "tiny-humor-no-humor"
    build_tokenizer(humor_dir, chat_template=False)
    labels = {0: "no_humor", 1: "humor"}
    LlamaForSequenceClassification(tiny_llama_config(
        tokenizer, num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()},
    )).save_pretrained(humor_dir)
    armo_dir = root / "tiny-armorm"
    build_tokenizer(armo_dir)
    pattern = tokenizer.encode(f"{EOT}{SOH}assistant{EOH}", add_special_tokens=False)
    config = tiny_llama_config(tokenizer, num_objectives=19, gating_hidden_dim=16,
                               gating_n_hidden=2, gating_temperature=10,
                               gating_token_pattern=pattern)
    config.max_position_embeddings = 4096
    ArmoRMForScoring(config).save_pretrained(armo_dir)
    return {"gpt2": gpt2_dir, "humor": humor_dir, "armorm": armo_dir}


class Direct:
    """Each text alone, unpadded, through the model itself."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tok = {k: AutoTokenizer.from_pretrained(d) for k, d in dirs.items()}
        self.models = {k: AutoModelForSequenceClassification.from_pretrained(dirs[k]).eval()
                       for k in ("gpt2", "humor")}
        self.models["armorm"] = ArmoRMForScoring.from_pretrained(dirs["armorm"]).eval()

    def ids(self, kind: str, text: str) -> list[int]:
        return self.tok[kind](text)["input_ids"]

    def chat_ids(self, messages: list[dict]) -> list[int]:
        tok = self.tok["armorm"]
        return tok(tok.apply_chat_template(messages, tokenize=False),
                   add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def forward(self, kind: str, ids: list[int]):
        return self.models[kind](input_ids=torch.tensor([ids]))


def read_table(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["method"]: row for row in csv.DictReader(handle)}


def run_args(tmp_path: Path, files: dict[str, Path], *extra: str) -> list[str]:
    return ["--results_dir", str(tmp_path / "results"), "--device", "cpu", "--no_progress",
            "--no_indicators", "--input_format", "args_pad",
            *[f for name, path in files.items() for f in ("--input_file", f"{name}={path}")],
            *extra]


def table_of(tmp_path: Path) -> dict[str, dict[str, str]]:
    return read_table(tmp_path / "results" / "rm_score" / "external" / "args_pad" / "args_pad"
                      / "rm_table.csv")


# ----- ARGS's records: an HH dialogue in the prompt -------------------------------------------

HH_PROMPTS = ["\n\nHuman: " + q + "\n\nAssistant:" for q in QUESTIONS]
ARGS_RESULTS = [" Boil water and cook.\n\nhuman: and then?", " Heat it.\n\nHUMAN: ok",
                " Penne.\n\nHuman: thanks\n\nAssistant: welcome"]


def write_args(path: Path) -> Path:
    records = [{"prompt": p, "result": r, "response": p + r, "elapsed": 1.0, "method": "args_0"}
               for p, r in zip(HH_PROMPTS, ARGS_RESULTS, strict=True)]
    path.write_text(json.dumps(records))
    return path


def test_args_records_are_scored_as_prompt_plus_response_once(tmp_path, scorer_dirs):
    files = {"args": write_args(tmp_path / "args_0.jsonl")}
    assert rm_evals.main(run_args(tmp_path, files, "--scorer", str(scorer_dirs["gpt2"]),
                                  "--scorer", f"{scorer_dirs['armorm']}:6")) == 0
    table = table_of(tmp_path)["args"]
    direct = Direct(scorer_dirs)
    answers = ["Boil water and cook.", "Heat it.", "Penne."]  # cut at human: in any case
    reward = [direct.forward("gpt2", direct.ids("gpt2", f"{p} {a}")).logits[0, 0].item()
              for p, a in zip(HH_PROMPTS, answers, strict=True)]
    assert float(table["tiny-gpt2-rm:reward"]) == pytest.approx(sum(reward) / 3, abs=1e-5)
    chat = [direct.forward("armorm", direct.chat_ids(
        [{"role": "user", "content": q}, {"role": "assistant", "content": a}])).rewards[0, 6].item()
        for q, a in zip(QUESTIONS, answers, strict=True)]
    assert float(table["tiny-armorm:ultrafeedback-instruction_following"]) == pytest.approx(
        sum(chat) / 3, abs=1e-5)


def test_an_args_result_that_still_holds_its_dialogue_is_cut_after_it():
    from evals.scoring.scoring_inputs import extract_args_pad_response

    prompt = HH_PROMPTS[1]
    assert extract_args_pad_response(prompt, prompt + " Heat it.\n\nHuman: ok") == "Heat it."
    # the continuation may quote the user: "human:" cuts it wherever it comes
    assert extract_args_pad_response(prompt, " Ask: is he user\nor a superhuman: no") == (
        "Ask: is he user\nor a super")


def test_scoring_args_reproduces_args_measure_reward(tmp_path, scorer_dirs, monkeypatch):
    files = {"args": write_args(tmp_path / "args_0.jsonl")}
    direct = Direct(scorer_dirs)
    # ARGS's text: prompt + the response after its prompt, cut before "human:", not stripped
    texts = ["\n\nHuman: " + QUESTIONS[0] + "\n\nAssistant: Boil water and cook.\n\n",
             "\n\nHuman: " + QUESTIONS[1] + "\n\nAssistant: Heat it.\n\n",
             "\n\nHuman: " + QUESTIONS[2] + "\n\nAssistant: Penne.\n\n"]
    lengths = [len(direct.ids("gpt2", t)) for t in texts]
    monkeypatch.setattr(public_scoring, "ARGS_SKIP_AT", max(lengths))  # the longest is skipped
    assert rm_evals.main(run_args(tmp_path, files, "--scoring", "args",
                                  "--scorer", str(scorer_dirs["gpt2"]))) == 0
    kept = [t for t, n in zip(texts, lengths, strict=True) if n < max(lengths)]
    want = [direct.forward("gpt2", direct.ids("gpt2", t)).logits[0, 0].item() for t in kept]
    row = table_of(tmp_path)["args"]
    assert float(row["tiny-gpt2-rm:reward"]) == pytest.approx(sum(want) / len(want), abs=1e-5)


def test_scoring_args_averages_each_file_over_its_own_inputs(tmp_path, scorer_dirs,
                                                             monkeypatch, capsys):
    """ARGS's measure_reward.py scores one file: a too-long input leaves that file's mean
    only, and another method's file keeps the same question."""
    short = tmp_path / "short.jsonl"
    records = [{"prompt": p, "result": " Ok.", "response": p + " Ok."} for p in HH_PROMPTS]
    short.write_text(json.dumps(records))
    files = {"args": write_args(tmp_path / "args_0.jsonl"), "short": short}
    direct = Direct(scorer_dirs)
    texts = {"args": ["\n\nHuman: " + q + "\n\nAssistant: " + a + "\n\n" for q, a in
                      zip(QUESTIONS, ("Boil water and cook.", "Heat it.", "Penne."), strict=True)],
             "short": [p + " Ok." for p in HH_PROMPTS]}
    ids = {m: [direct.ids("gpt2", t) for t in ts] for m, ts in texts.items()}
    limit = max(len(i) for i in ids["args"])  # args's longest input is skipped, short's kept
    assert all(len(i) < limit for i in ids["short"])
    monkeypatch.setattr(public_scoring, "ARGS_SKIP_AT", limit)
    assert rm_evals.main(run_args(tmp_path, files, "--scoring", "args",
                                  "--scorer", str(scorer_dirs["gpt2"]))) == 0
    warning = capsys.readouterr().err
    out = tmp_path / "results" / "rm_score" / "external" / "args_pad" / "args_pad"
    avg = read_table(out / "tiny-gpt2-rm_logit0_avg.csv")
    for method, id_lists in ids.items():
        want = [direct.forward("gpt2", i).logits[0, 0].item() for i in id_lists if len(i) < limit]
        assert float(avg[method]["mean"]) == pytest.approx(sum(want) / len(want), abs=1e-5)
    assert {m: avg[m]["n"] for m in avg} == {"args": "2", "short": "3"}
    assert "left out of its own method's average" in warning
    assert "left out of its own method's mean" in (out / "rm_table.md").read_text()
    meta = json.loads((out / "rm_table.meta.json").read_text())
    assert meta["skipped_as_too_long"] == {"external/args_pad/args_pad": {"tiny-gpt2-rm:reward": 1}}


# ----- PAD's records: the decoded whole conversation in `result` -------------------------------


def write_pad(path: Path, prefix: str, responses: list[str]) -> Path:
    records = []
    for question, response in zip(QUESTIONS, responses, strict=True):
        prompt = prefix + question
        result = f"user\n\n{prompt}assistant\n\n{response}{TAIL}"
        records.append({"prompt": prompt, "result": result, "response": prompt + result,
                        "elapsed": 1.0, "method": path.stem})
    path.write_text(json.dumps(records))
    return path


def pad_by_hand(question: str, response: str, preference: bool) -> tuple[str, list[dict]]:
    """PAD's measure_reward.py, written out: the GPT-2 path's text and the ArmoRM path's
    messages of one record (user/assistant renamed once, [Guidelines]...[Instruction] out)."""
    plain = f"Human:\n\n {question} Assistant:\n\n{response}{TAIL}" if preference else \
        f"Human:\n\n{question} Assistant:\n\n{response}{TAIL}"
    # the ArmoRM path cuts the user turn up to [Instruction]; without one, its first 12 chars
    user = f" {question}" if preference else f"user\n\n{question}"[12:]
    return plain, [{"role": "user", "content": user},
                   {"role": "assistant", "content": f"{response}{TAIL}".strip()}]


def test_scoring_pad_equals_pad_measure_reward_by_hand(tmp_path, scorer_dirs):
    files = {"vanilla": write_pad(tmp_path / "psoups_0.jsonl", "", RESPONSES["vanilla"]),
             "pad": write_pad(tmp_path / "psoups_humor_0.jsonl", PAD_PROMPT, RESPONSES["pad"])}
    assert rm_evals.main(run_args(
        tmp_path, files, "--scoring", "pad", "--scorer", str(scorer_dirs["gpt2"]),
        "--scorer", f"{scorer_dirs['humor']}:humor", "--scorer", f"{scorer_dirs['armorm']}:0",
    )) == 0
    table = table_of(tmp_path)
    direct = Direct(scorer_dirs)
    values: dict[str, dict[str, list]] = {}
    for method, responses in RESPONSES.items():
        cols = values[method] = {"reward": [], "humor": [], "armo": []}
        for question, response in zip(QUESTIONS, responses, strict=True):
            plain, messages = pad_by_hand(question, response, method == "pad")
            ids = direct.ids("gpt2", plain)
            if len(ids) >= 1024:  # skipped by PAD's GPT-2 path, humour included
                cols["reward"].append(None)
                cols["humor"].append(None)
            else:
                cols["reward"].append(direct.forward("gpt2", ids).logits[0, 0].item())
                humor_ids = direct.ids("humor", plain)[:512]  # cut, not skipped
                cols["humor"].append(direct.forward("humor", humor_ids).logits[0, 1].item())
            cols["armo"].append(
                direct.forward("armorm", direct.chat_ids(messages)).rewards[0, 0].item())
    lengths = {m: [len(direct.ids("gpt2", pad_by_hand(q, r, m == "pad")[0]))
                   for q, r in zip(QUESTIONS, RESPONSES[m], strict=True)] for m in RESPONSES}
    assert 512 <= lengths["pad"][1] < 1024 and lengths["vanilla"][2] >= 1024  # both rules act
    skipped = {m: [i for i, v in enumerate(values[m]["reward"]) if v is None] for m in values}
    assert skipped == {"vanilla": [2], "pad": []}
    # PAD's script averages each file over its own kept inputs: pad keeps its question 2
    for method in RESPONSES:
        for column, key in (("tiny-gpt2-rm:reward", "reward"),
                            ("tiny-humor-no-humor:logit_humor", "humor"),
                            ("tiny-armorm:helpsteer-helpfulness", "armo")):
            kept = [v for v in values[method][key] if v is not None]
            assert float(table[method][column]) == pytest.approx(sum(kept) / len(kept),
                                                                 abs=1e-5), (method, column)


def test_public_scoring_needs_the_public_files(tmp_path, scorer_dirs, capsys):
    code = rm_evals.main(["--output_dir", str(tmp_path), "--scoring", "pad",
                          "--scorer", str(scorer_dirs["gpt2"])])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "--input_file" in err and len(err.splitlines()) == 1


# ----- smaller departures: end-of-turn headers, every method found ----------------------------


@pytest.mark.parametrize(("result", "response"), [
    ("user\n\nHow?assistant\n\nHeat it.\nuser\n\nThanks", "Heat it."),  # Llama-3, newline first
    ("system\nBe kind.\nuser\nHow?\nassistant\nHeat it.\nuser\nThanks", "Heat it."),  # ChatML
])
def test_a_role_header_after_a_newline_ends_the_turn(result, response):
    from evals.scoring.scoring_inputs import extract_args_pad_response

    assert extract_args_pad_response("How?", result) == response


def write_responses(root: Path, setting: str, methods: tuple[str, ...]) -> None:
    run = root / setting / "Tiny-Gen" / "toy"
    run.mkdir(parents=True)
    for method in methods:
        records = [{"index": i, "question": q, "preference": "humor", "response": f"{method} {i}"}
                   for i, q in enumerate(QUESTIONS)]
        (run / f"{method}.json").write_text(json.dumps(records))
        (run / f"{method}.meta.json").write_text(json.dumps({"config": {}}))


def test_no_methods_flag_scores_every_method_found(tmp_path, scorer_dirs):
    write_responses(tmp_path / "responses", "humor", ("base", "pad"))  # PAD's whole table
    write_responses(tmp_path / "responses", "harmless", ("base", "pad", "pad_w0.5_k10_greedy"))
    common = ["--output_dir", str(tmp_path / "responses"), "--results_dir",
              str(tmp_path / "results"), "--device", "cpu", "--no_progress", "--no_indicators",
              "--scorer", str(scorer_dirs["gpt2"])]
    assert rm_evals.main([*common, "--pref_name", "humor", "--model_name", "Tiny-Gen",
                          "--eval_data", "toy"]) == 0
    table = read_table(tmp_path / "results" / "rm_score" / "humor" / "Tiny-Gen" / "toy"
                       / "rm_table.csv")
    assert list(table) == ["base", "pad"]
    assert rm_evals.main(common) == 0  # every setting, each with its own methods
    summary = tmp_path / "results" / "rm_score" / "tiny-gpt2-rm_logit0_summary.csv"
    with open(summary, newline="") as handle:
        rows = {r["preference"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"humor", "harmless"}
    assert rows["humor"]["pad_w0.5_k10_greedy"] == "" and rows["harmless"]["pad_w0.5_k10_greedy"]


def test_readme_pad_scorers_example_reads_pads_heads():
    """evals/README.md's "PAD's scorers" command reads what PAD's measure_reward.py reports: the
    GPT-2 rewards, ArmoRM heads 0 and 10, and the humour classifier's raw logit of label 1."""
    import re
    import shlex

    readme = (ROOT / "evals" / "README.md").read_text()
    start = readme.index("python evals/rm_evals.py", readme.index("PAD's scorers with PAD's"))
    command = readme[start:readme.index("\n# ", start)]
    argv = shlex.split(re.sub(r"\\\n", " ", command))[2:]  # after `python evals/rm_evals.py`
    config = rm_evals.config_from_args(rm_evals.build_parser().parse_args(argv))
    heads = {(spec.model, spec.head) for spec in config.specs if not spec.legacy}
    assert heads == {("Ray2333/gpt2-large-helpful-reward_model", None),
                     ("Ray2333/gpt2-large-harmless-reward_model", None),
                     ("mohameddhiab/humor-no-humor", "logit:1"),
                     ("RLHFlow/ArmoRM-Llama3-8B-v0.1", "0"),
                     ("RLHFlow/ArmoRM-Llama3-8B-v0.1", "10")}
