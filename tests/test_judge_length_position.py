"""Judging that length and position cannot fool: both orders, length-controlled win rates,
ARGS's protocol and judge agreement, against the scripted OpenAI-compatible server of
``test_gpt_evals`` (every expected number is computed here from the fixture alone)."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evals.judge import agreement_cli as judge_agreement  # noqa: E402
from evals.judge import gpt_cli as gpt_evals  # noqa: E402
from evals.judge.judge import presentation_order  # noqa: E402
from evals.judge.judge_protocols import ARGS, get_protocol, parse_score_verdict  # noqa: E402
from evals.judge.length_control import length_controlled, length_feature  # noqa: E402
from tests import test_gpt_evals as served  # noqa: E402
from tests.test_gpt_evals import (  # noqa: E402
    N_QUESTIONS,
    SCORES,
    cli_args,
    expected_counts,
    read_table,
    table_path,
)

# the scripted server and the response files of test_gpt_evals, as fixtures here too
judge_server, workspace = served.judge_server, served.workspace

BONUS = 20  # the biased judge keeps the first text unless the second is longer by more
# amulet's extra characters over pref per question: far longer, close (either way), shorter
EXTRA = [60, 45, 33, 27, 10, 0, -5, -15, 40, 35, -30, 80]


def prefer_first_and_longer(text_1: str, text_2: str) -> int:
    return 1 if len(text_1) + BONUS >= len(text_2) else 2


def write_length_run(workspace: Path) -> dict[str, list[str]]:
    """pref and amulet answers whose lengths differ by EXTRA (+ the name's two letters)."""
    run = workspace / "responses" / "creative" / "Tiny-Model" / "toy"
    texts = {"pref": [f"pref {'y' * 50}" for _ in EXTRA],
             "amulet": [f"amulet {'x' * (50 + e)}" for e in EXTRA]}
    for method, answers in texts.items():
        records = [{"index": i, "question": f"Q{i}?", "preference": "Be verbose.",
                    "response": text} for i, text in enumerate(answers)]
        (run / f"{method}.json").write_text(json.dumps(records))
    return texts


def length_args(workspace, server, *extra: str) -> list[str]:
    args = cli_args(workspace, server, *extra)
    args[args.index("--methods") + 1] = "pref,amulet"
    return args


def l1_fit(x: np.ndarray, y: np.ndarray, c: float = 100.0) -> np.ndarray:
    """Independent fit of c * sum(logloss with soft labels) + |w|_1: w = u - v with u, v >= 0
    makes the objective smooth, minimised by scipy's L-BFGS-B under those bounds."""
    from scipy.optimize import minimize

    k = x.shape[1]

    def objective(uv: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ (uv[:k] - uv[k:])
        loss = c * np.sum(y * np.logaddexp(0.0, -z) + (1.0 - y) * np.logaddexp(0.0, z))
        gradient = c * x.T @ (1.0 / (1.0 + np.exp(-z)) - y)
        return loss + uv.sum(), np.concatenate([gradient + 1.0, 1.0 - gradient])

    found = minimize(objective, np.zeros(2 * k), jac=True, method="L-BFGS-B",
                     bounds=[(0.0, None)] * (2 * k),
                     options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000})
    return found.x[:k] - found.x[k:]


def hand_lc(y, delta, difficulty=None) -> tuple[float, float]:
    """(LC win rate, length coefficient) by the AlpacaEval 2 definition, by hand."""
    delta = np.asarray(delta, dtype=float)
    columns = [np.ones(len(y)), np.tanh(delta / np.std(delta, ddof=1))]
    if difficulty is not None:
        columns.append(np.asarray(difficulty, dtype=float))
    x = np.column_stack(columns)
    w = l1_fit(x, np.asarray(y, dtype=float))
    at_zero = x.copy()
    at_zero[:, 1] = 0.0
    return float(np.mean(1.0 / (1.0 + np.exp(-(at_zero @ w))))), float(w[1])


def test_length_feature_is_tanh_of_the_standardised_difference():
    delta = np.array([-40.0, 3.0, 12.0, 90.0])
    assert np.allclose(length_feature(delta), np.tanh(delta / np.std(delta, ddof=1)))


@pytest.mark.parametrize("with_difficulty", [False, True])
def test_length_controlled_fit_equals_an_independent_l1_fit(with_difficulty):
    rng = np.random.default_rng(0)
    y = rng.choice([0.0, 0.5, 1.0], size=30)
    len_t, len_b = rng.integers(20, 400, 30), rng.integers(20, 400, 30)
    difficulty = rng.normal(size=30) if with_difficulty else None
    fit = length_controlled(y, len_t, len_b, difficulty)
    lc, beta = hand_lc(y, len_t - len_b, difficulty)
    assert fit.lc_win_rate == pytest.approx(lc, abs=1e-6)
    assert fit.length_coef == pytest.approx(beta, abs=1e-5)
    assert math.isnan(fit.difficulty_coef) != with_difficulty


@pytest.mark.parametrize("outcome", [0.0, 1.0])
@pytest.mark.parametrize("with_difficulty", [False, True])
def test_a_pair_with_one_outcome_only_fits_as_the_independent_l1_fit(outcome, with_difficulty):
    rng = np.random.default_rng(1)
    y = np.full(6, outcome)
    len_t, len_b = rng.integers(20, 400, 6), rng.integers(20, 400, 6)
    difficulty = rng.normal(size=6) if with_difficulty else None
    fit = length_controlled(y, len_t, len_b, difficulty)
    lc, beta = hand_lc(y, len_t - len_b, difficulty)
    assert fit.lc_win_rate == pytest.approx(lc, abs=1e-6)
    assert (fit.lc_win_rate > 0.99) == (outcome == 1.0)
    assert fit.length_coef == pytest.approx(beta, abs=1e-5)


def run_both_ways(workspace, judge_server):
    texts = write_length_run(workspace)
    judge_server.prefer = prefer_first_and_longer
    delta = np.array([len(a) - len(p) for a, p in zip(texts["amulet"], texts["pref"],
                                                         strict=True)])
    assert not np.any(np.abs(delta) == BONUS)  # no boundary case
    return delta


def test_both_orders_expose_the_position_bias_exactly(workspace, judge_server):
    delta = run_both_ways(workspace, judge_server)
    n = len(delta)
    assert gpt_evals.main(length_args(workspace, judge_server, "--both_orders")) == 0
    assert judge_server.received == 2 * n
    row = read_table(table_path(workspace))["pref"]
    # each order keeps the first text unless the other is longer by more than BONUS
    win, lose = int(np.sum(delta > BONUS)), int(np.sum(delta < -BONUS))
    order_dependent = n - win - lose
    assert (int(row["win"]), int(row["tie"]), int(row["lose"])) == (win, order_dependent, lose)
    assert float(row["order_consistency"]) == pytest.approx((win + lose) / n)
    # consistent pairs: one first-position win in two; order-dependent ones: two in two
    assert float(row["first_position_rate"]) == pytest.approx((n + order_dependent) / (2 * n))
    sent = judge_server.received
    assert gpt_evals.main(length_args(workspace, judge_server, "--both_orders")) == 0
    assert judge_server.received == sent  # cached like every judgment


def test_length_controlled_rate_moves_the_biased_rate_to_the_hand_computed_value(
    workspace, judge_server
):
    delta = run_both_ways(workspace, judge_server)
    n = len(delta)
    # one order, seeded: the text shown first wins unless the other is longer by > BONUS
    assert gpt_evals.main(length_args(workspace, judge_server)) == 0
    first = [presentation_order(42, i, "amulet", "pref")[0] for i in range(n)]
    y_single = np.array([float(d >= -BONUS) if f == "amulet" else float(d > BONUS)
                         for d, f in zip(delta, first, strict=True)])
    # both orders: half the requests are the single-order run's, served from the cache
    assert gpt_evals.main(length_args(workspace, judge_server, "--both_orders")) == 0
    assert judge_server.received == 2 * n
    y_both = np.where(delta > BONUS, 1.0, np.where(delta < -BONUS, 0.0, 0.5))
    row = read_table(table_path(workspace))["pref"]
    lc, beta = hand_lc(y_both, delta)
    raw = float(y_both.mean())
    assert float(row["win_rate_ties_half"]) == pytest.approx(raw)
    assert float(row["lc_win_rate"]) == pytest.approx(lc, abs=1e-6)
    assert float(row["length_coef"]) == pytest.approx(beta, abs=1e-5)
    assert beta > 0 and raw > 0.5 and abs(lc - 0.5) < abs(raw - 0.5)  # towards 50 %
    assert float(row["target_mean_chars"]) - float(row["baseline_mean_chars"]) == (
        pytest.approx(delta.mean()))
    # the single-order table, recomputed from the cache, moves by its own hand value
    assert gpt_evals.main(length_args(workspace, judge_server)) == 0
    row = read_table(table_path(workspace))["pref"]
    assert float(row["win_rate_ties_half"]) == pytest.approx(y_single.mean())
    assert float(row["lc_win_rate"]) == pytest.approx(hand_lc(y_single, delta)[0], abs=1e-6)
    assert judge_server.received == 2 * n
    summary_md = (table_path(workspace).parent / "gpt_win_rate_mtx.md").read_text()
    assert "| lc_win_rate |" in summary_md and "| target_mean_chars |" in summary_md


def test_per_question_difficulty_comes_from_the_other_baselines(workspace, judge_server):
    # amulet against three baselines: each pair's fit gets a difficulty from the other two
    run = workspace / "responses" / "creative" / "Tiny-Model" / "toy"
    texts = {m: [f"{m} says answer {i} with score={s}" + " pad" * ((3 * i + len(m)) % 7)
                 for i, s in enumerate(scores)] for m, scores in SCORES.items()}
    for method, answers in texts.items():
        records = json.loads((run / f"{method}.json").read_text())
        for record, text in zip(records, answers, strict=True):
            record["response"] = text
        (run / f"{method}.json").write_text(json.dumps(records))
    assert gpt_evals.main(cli_args(workspace, judge_server)) == 0
    table = read_table(table_path(workspace))

    def score(baseline: str) -> np.ndarray:
        pairs = zip(SCORES["amulet"], SCORES[baseline], strict=True)
        return np.array([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])

    def length(method: str) -> np.ndarray:
        return np.array([len(text) for text in texts[method]], dtype=float)

    for baseline in ("base", "pref", "la"):
        others = [score(b) for b in ("base", "pref", "la") if b != baseline]
        share = (sum(others) + 0.5) / (len(others) + 1.0)
        difficulty = np.log(share / (1.0 - share))
        lc, beta = hand_lc(score(baseline), length("amulet") - length(baseline), difficulty)
        assert float(table[baseline]["lc_win_rate"]) == pytest.approx(lc, abs=1e-6)
        assert float(table[baseline]["length_coef"]) == pytest.approx(beta, abs=1e-5)


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [("8 3\nbecause", "text_1"), ("2 9", "text_2"), ("7 7\n", "tie"), ("6.5 6", "text_1"),
     ("  4   5  \nwhy", "text_2"), ("Assistant 1: 8\nAssistant 2: 3", None), ("8,3", None),
     ("8", None), ("8 3 1", None), ("0 5", None), ("8 11", None), ("", None),
     ("\n8 3", None), ("eight three", None)],
)
def test_args_scores_parse_from_the_first_line_only(answer, verdict):
    assert parse_score_verdict(answer) == verdict


def test_args_protocol_prompts_and_decoding_are_args(workspace, judge_server):
    args = cli_args(workspace, judge_server, "--judge_protocol", "args", "--max_questions", "1")
    assert gpt_evals.main(args) == 0
    body = judge_server.bodies[0]
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("gpt-4", 0.7, 2048)
    system, user = (m["content"] for m in body["messages"])
    assert system.startswith("[System]\nYou are a helpful, harmless, and precise assistant")
    assert system.endswith("ensuring that the order in which the responses were presented "
                           "does not affect your judgment.")
    assert user.startswith("[Question]\nQuestion 0: how {now}? Your answer should be creative")
    assert "\n\n[The End of Assistant 1's Answer]\n\n[The Start of Assistant 2's Answer]\n" in user
    assert user.endswith("\n\n[The End of Assistant 2's Answer]")
    out = workspace / "results" / "gpt_win_rate_args" / "creative" / "Tiny-Model" / "toy"
    rows = read_table(out / "gpt_win_rate_mtx.csv")
    assert {r["judge"] for r in rows.values()} == {"gpt-4 [args]"}


def test_args_protocol_counts_re_asks_once_then_invalid(workspace, judge_server):
    # first comparison: garbage, then a valid re-ask; second: garbage twice -> invalid
    judge_server.script = ["garbage", "ok", "garbage", "garbage"]
    args = cli_args(workspace, judge_server, "--judge_protocol", "args", "--max_concurrency",
                    "1", "--max_invalid_retries", "1")
    assert gpt_evals.main(args) == 0
    assert judge_server.received == 3 * N_QUESTIONS + 2
    reask = judge_server.bodies[1]["messages"]
    assert len(reask) == 3 and reask[2]["content"] == ARGS.reask_reminder
    out = workspace / "results" / "gpt_win_rate_args" / "creative" / "Tiny-Model" / "toy"
    rows = read_table(out / "gpt_win_rate_mtx.csv")
    assert sum(int(r["invalid"]) for r in rows.values()) == 1
    for baseline, row in rows.items():
        want = expected_counts("amulet", baseline)
        got = {k: int(row[k]) for k in ("win", "tie", "lose")}
        assert all(got[k] <= want[k] for k in want) and sum(want.values()) - sum(
            got.values()) == int(row["invalid"])
    # the paper's protocol has other cache keys: it asks everything anew
    sent = judge_server.received
    assert gpt_evals.main(cli_args(workspace, judge_server)) == 0
    assert judge_server.received == sent + 3 * N_QUESTIONS


def test_unknown_protocol_is_one_line(workspace, judge_server, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpt_evals.main(cli_args(workspace, judge_server, "--judge_protocol", "arg"))
    assert exit_info.value.code == 2
    assert "invalid choice: 'arg'" in capsys.readouterr().err
    with pytest.raises(Exception, match="did you mean args"):
        get_protocol("arg")


def test_a_served_local_judge_answers_through_judge_base_url(workspace, judge_server,
                                                             monkeypatch):
    # vLLM's `vllm serve` and llama.cpp's server take any key ("EMPTY") and the served name
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    args = cli_args(workspace, judge_server, "--judge_model", "Qwen/Qwen2.5-7B-Instruct",
                    "--judge_backend", "openai")
    assert gpt_evals.main(args) == 0
    assert {b["model"] for b in judge_server.bodies} == {"Qwen/Qwen2.5-7B-Instruct"}
    for baseline, row in read_table(table_path(workspace)).items():
        assert {k: int(row[k]) for k in ("win", "tie", "lose")} == expected_counts(
            "amulet", baseline)
        assert row["judge"] == "Qwen/Qwen2.5-7B-Instruct"


def test_agreement_of_two_judges_is_raw_share_and_cohens_kappa(workspace, judge_server,
                                                               capsys):
    assert gpt_evals.main(cli_args(workspace, judge_server)) == 0  # judge A: by score
    judge_server.prefer = prefer_first_and_longer  # judge B: the first text (equal lengths)
    assert gpt_evals.main(cli_args(workspace, judge_server, "--judge_protocol", "args")) == 0
    labels_a, labels_b = [], []
    for baseline in ("base", "pref", "la"):
        for i in range(N_QUESTIONS):
            s_t, s_b = SCORES["amulet"][i], SCORES[baseline][i]
            labels_a.append("amulet" if s_t > s_b else baseline if s_b > s_t else "tie")
            labels_b.append(presentation_order(42, i, "amulet", baseline)[0])
    p_o = np.mean([a == b for a, b in zip(labels_a, labels_b, strict=True)])
    categories = set(labels_a) | set(labels_b)
    p_e = sum(labels_a.count(c) * labels_b.count(c) for c in categories) / len(labels_a) ** 2
    results = workspace / "results"
    out = workspace / "agree.csv"
    assert judge_agreement.main([str(results / "gpt_win_rate"),
                                 str(results / "gpt_win_rate_args"), "--out", str(out)]) == 0
    assert "| method_a |" in capsys.readouterr().out
    with open(out, newline="") as handle:
        rows = {(r["method_a"], r["method_b"]): r for r in csv.DictReader(handle)}
    total = rows[("(all)", "(all)")]
    assert int(total["n"]) == 3 * N_QUESTIONS
    assert float(total["agreement"]) == pytest.approx(p_o)
    assert float(total["kappa"]) == pytest.approx((p_o - p_e) / (1 - p_e))
    assert total["judge_b"] == "gpt-4 [args]" and int(total["only_in_a"]) == 0


def test_agreement_without_shared_pairs_is_one_line(tmp_path, capsys):
    a, b = tmp_path / "a_judgments.csv", tmp_path / "b_judgments.csv"
    header = "index,method_a,method_b,text_1,text_2,raw_answer,outcome,judge\n"
    a.write_text(header + "0,amulet,la,la,amulet,Text 1,la,j1\n")
    b.write_text(header + "1,amulet,la,la,amulet,Text 1,la,j2\n")
    assert judge_agreement.main([str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "share no validly judged pair" in err[0]
