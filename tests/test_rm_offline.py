"""rm_evals without a hub: the indicators alone (--scorer none), the embedded model's mean
log-likelihood (--scorer loglik), and settings whose methods answered different questions."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.scoring import rm_cli  # noqa: E402

PREFERENCE = "Your answer should be creative as much as possible."
SIZES = {"base": 4, "pref": 4, "amulet": 6, "pad": 2}  # amulet ran further, pad a short trial


def write_setting(root: Path, sizes: dict[str, int] = SIZES) -> Path:
    run = root / "responses" / "creative" / "Gen" / "toy"
    run.mkdir(parents=True)
    for method, n in sizes.items():
        records = [{"index": i, "question": f"What is {i} plus one?", "preference": PREFERENCE,
                    "response": f"It is {i + 1}, says {method}." + " Indeed." * i}
                   for i in range(n)]
        (run / f"{method}.json").write_text(json.dumps(records))
    return run


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_scorer_none_gives_the_indicators_on_the_shared_questions(tmp_path, capsys):
    write_setting(tmp_path)
    args = ["--output_dir", str(tmp_path / "responses"), "--results_dir",
            str(tmp_path / "results"), "--scorer", "none", "--length_tokenizer", "none",
            "--max_new_tokens", "64", "--no_progress"]
    assert rm_cli.main(args) == 0
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "note: creative/Gen/toy: skipping pad (2 questions, fewer than the other methods "
        "share; name it in --methods to compare on its questions)",
        "note: creative/Gen/toy: comparing 3 methods on the 4 questions they all answered "
        "(amulet has 6)",
    ]
    assert "judge-free indicators only" in captured.out
    out = tmp_path / "results" / "rm_score" / "creative" / "Gen" / "toy"
    rows = read_csv(out / "rm_table.csv")
    assert [r["method"] for r in rows] == ["base", "pref", "amulet"]
    # amulet's mean length is over the 4 shared questions, as the others' (its responses
    # grow with the index: over all 6 it would be longer)
    words = {r["method"]: float(r["len_words"]) for r in rows}
    assert words["amulet"] == words["base"] == words["pref"]
    assert not list(out.glob("*.scores.jsonl"))  # no model was asked anything

    # named in --methods, pad is compared on its own 2 questions
    assert rm_cli.main([*args, "--methods", "base,pad"]) == 0
    assert "comparing 2 methods on the 2 questions they all answered (base has 4)" in \
        capsys.readouterr().err
    assert [r["method"] for r in read_csv(out / "rm_table.csv")] == ["base", "pad"]


def test_loglik_scorer_is_the_literal_mean_log_probability_of_the_response(tmp_path):
    """Batched and right-padded, each row's number equals log_softmax of one unpadded forward,
    summed over the assistant turn's tokens (its end of turn included) / their count."""
    import torch

    from evals.scoring import loglik_scorer
    from evals.scoring.reward_model import chat_ids, plan_batches, score_rows

    rm = loglik_scorer.load_loglik_scorer("cpu", "float32", None)
    prompts = ["What is rain?", "Name a colour."]
    responses = ["Water falling from clouds, drop by drop.", "Blue."]
    rows = [chat_ids(rm.tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
    assert plan_batches(rows, rm.pad_id, 8) == [[0, 1]]  # one padded batch
    got = score_rows(rm, rows)
    model = rm.ensure_model()
    end = rm.tokenizer.eos_token_id
    for ids, response, record in zip(rows, responses, got, strict=True):
        answer = rm.tokenizer(response, add_special_tokens=False)["input_ids"]
        start = max(k for k in range(len(ids)) if ids[k:k + len(answer)] == answer)
        stop = ids.index(end, start) + 1
        with torch.inference_mode():
            logits = model(torch.tensor([ids])).logits[0].float()
        log_probs = torch.log_softmax(logits, dim=-1)
        literal = sum(float(log_probs[t - 1, ids[t]]) for t in range(start, stop)) / (stop - start)
        assert record["n_response_tokens"] == len(answer) + 1
        assert record["mean_logprob"] == pytest.approx(literal, abs=1e-4)


def test_loglik_scorer_fills_the_table_offline(tmp_path, capsys):
    write_setting(tmp_path, {"pref": 2, "amulet": 2})
    args = ["--output_dir", str(tmp_path / "responses"), "--results_dir",
            str(tmp_path / "results"), "--scorer", "loglik", "--no_progress",
            "--device", "cpu", "--num_threads", "1"]
    assert rm_cli.main(args) == 0
    out = tmp_path / "results" / "rm_score" / "creative" / "Gen" / "toy"
    rows = read_csv(out / "rm_table.csv")
    assert all(float(r["loglik:mean_logprob"]) < 0 for r in rows)
    assert "not a reward model" in (out / "rm_table.md").read_text()
    averages = read_csv(out / "loglik_mean_logprob_avg.csv")
    assert [(r["method"], r["n"]) for r in averages] == [("pref", "2"), ("amulet", "2")]
    capsys.readouterr()
    assert rm_cli.main([*args, "--scorer", "loglik:3"]) == 2
    assert "drop :3" in capsys.readouterr().err
