"""evals/analysis.py: the k table and its regimes, the implicit PAD rule, Table 1 from hand-made
evaluation outputs, and the whole analysis end to end on a tiny random model."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from DecodingMethodsModels.rules.combine import amulet_ratio, linear_alignment
from evals.judge.win_rate import TARGET_COLUMNS
from evals.scoring.rm_table import AVG_COLUMNS
from evals.study import analysis_cli as analysis
from evals.study import analysis_k, analysis_table1
from evals.study.analysis_identity import agreement, implicit_pad_scores
from evals.study.analysis_sweep import share_mentioning
from evals.tables import to_csv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG = b"\x89PNG\r\n\x1a\n"


# ---- k(T, alpha, lambda, eta) ----------------------------------------------------------------

def test_k_table_equals_amulet_ratio_over_the_paper_sweeps():
    rows = analysis_k.k_table()
    swept = {name: [r[name] for r in rows if r["swept"] == name] for name in analysis_k.SWEEPS}
    assert swept["T"] == [0, 20, 40, 60, 80, 100]
    assert swept["eta"] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert swept["alpha"] == swept["lambda"] == list(range(1, 11))
    assert len([r for r in rows if r["swept"] == "alpha,lambda"]) == 100
    for row in rows:
        assert row["k"] == amulet_ratio(row["T"], row["alpha"], row["lambda"], row["eta"])
        assert row["cfg_guidance_scale"] == row["pad_implicit_w"] == 1.0 + row["k"]
    defaults = next(r for r in rows if r["swept"] == "T" and r["T"] == 60)
    assert defaults["k"] == pytest.approx(4.6487, abs=1e-4)


def _doubling_increments(alpha: float, lam: float) -> tuple[float, float, float, float]:
    k1, k2, k4 = (amulet_ratio(T, alpha, lam, 10.0) for T in (1000, 2000, 4000))
    return k1, k2, k4, (k4 - k2) - (k2 - k1)


@pytest.mark.parametrize("alpha", [float(a) for a in range(1, 11)])
def test_regime_labels_match_the_closed_form_limits(alpha):
    """Against the recursion itself at large T: converging k stays below alpha / (lambda -
    alpha) with a gap shrinking like T^(alpha/lambda - 1); at alpha = lambda, k(2T) - k(T) is
    ln 2; diverging k grows like T^(alpha/lambda - 1) with growing increments."""
    rows = [r for r in analysis_k.k_table() if r["swept"] == "alpha,lambda" and r["alpha"] == alpha]
    for row in rows:
        lam = row["lambda"]
        k1, k2, k4, acceleration = _doubling_increments(alpha, lam)
        if alpha < lam:
            assert row["regime"] == analysis_k.CONVERGES
            limit = alpha / (lam - alpha)
            assert row["limit"] == pytest.approx(limit)
            assert k2 < k4 < limit
            assert math.log2((limit - k4) / (limit - k2)) == pytest.approx(alpha / lam - 1,
                                                                          abs=0.03)
        elif alpha == lam:
            assert row["regime"] == analysis_k.LOG_GROWTH and math.isinf(row["limit"])
            assert k4 - k2 == pytest.approx(math.log(2), abs=1e-3)
        else:
            assert row["regime"] == analysis_k.DIVERGES and math.isinf(row["limit"])
            assert acceleration > 0
            assert math.log2(k4 / k2) == pytest.approx(alpha / lam - 1, abs=0.1)


# ---- the implicit PAD rule and agreement -----------------------------------------------------

def test_implicit_pad_is_pads_literal_score_over_the_base_top_k():
    torch.manual_seed(0)
    pref = torch.log_softmax(torch.randn(3, 50), dim=-1)
    base = torch.log_softmax(torch.randn(3, 50), dim=-1)
    raw_z = base + 7.0  # the decoding model's raw logits: log-probs up to a row constant
    w, top_k = 3.5, 10
    got = implicit_pad_scores(pref, base, w, top_k)
    for row in range(3):
        ids = raw_z[row].topk(top_k).indices
        z, u = raw_z[row, ids], pref[row, ids] - 2.0
        literal = z + w * (torch.log_softmax(u, -1) - torch.log_softmax(z, -1))
        difference = got[row, ids] - literal
        assert torch.allclose(difference, difference[0].expand_as(difference), atol=1e-4)
        outside = torch.ones(50, dtype=torch.bool)
        outside[ids] = False
        assert torch.isneginf(got[row, outside]).all()
    full = implicit_pad_scores(pref, base, w, top_k=50)
    assert torch.equal(full.argmax(-1), linear_alignment(pref, base, w - 1).argmax(-1))


def test_agreement_counts_identical_outputs_and_common_prefixes():
    result = agreement([[1, 2, 3, 4], [5, 6], []], [[1, 2, 3, 4], [5, 7, 8], []])
    assert result["identical_count"] == 2 and result["n"] == 3
    assert result["token_agreement"] == pytest.approx((1 + 1 / 3 + 1) / 3)


def test_share_mentioning_counts_whole_words_in_any_case():
    texts = ["Be Creative!", "creatively so", "so creative.", "verbose"]
    assert share_mentioning(texts, "creative") == 0.5
    assert math.isnan(share_mentioning([], "creative"))


# ---- Table 1 and the win-tie-lose figure from hand-made evaluation outputs -------------------

RM_FILE = "RLHFlow__ArmoRM-Llama3-8B-v0.1_dim6_avg.csv"
METHODS = ("base", "pref", "beam", "la", "amulet")
MODEL = "Llama-3.1-8B-Instruct"
PERSONAL = "personal_preference_eval_preference_data"


def _score(pref: str, dataset: str, method: str) -> float:
    return (0.1 * METHODS.index(method) + (0.05 if dataset == PERSONAL else 0.0)
            + (0.01 if pref == "verbose" else 0.0))


def _hand_made_results(root: Path) -> None:
    for pref in ("creative", "verbose"):
        for dataset in ("HelpSteer_train", PERSONAL):
            rows = [{"method": m, "mean": _score(pref, dataset, m), "std": 0.1, "n": 4}
                    for m in METHODS]
            path = root / "rm_score" / pref / MODEL / dataset / RM_FILE
            path.parent.mkdir(parents=True)
            path.write_text(to_csv(rows, AVG_COLUMNS))
            wins = [{"target": "amulet", "baseline": b, "win": 3 + i, "tie": 1, "lose": 1,
                     "invalid": 0, "n": 5 + i} for i, b in enumerate(METHODS[:4])]
            path = root / "gpt_win_rate" / pref / MODEL / dataset / "gpt_win_rate_mtx.csv"
            path.parent.mkdir(parents=True)
            path.write_text(to_csv(wins, TARGET_COLUMNS))


def test_table1_has_the_papers_layout_beside_the_papers_numbers(tmp_path):
    _hand_made_results(tmp_path)
    scores = analysis_table1.read_rm_scores(tmp_path, "RLHFlow/ArmoRM-Llama3-8B-v0.1", "dim6")
    assert len(scores) == 2 * 2 * 5
    rows = analysis_table1.table1_rows(scores)
    assert [(r["model"], r["dataset"]) for r in rows] == [
        (MODEL, "HelpSteer_train"), (MODEL, PERSONAL), (MODEL, "average")]
    columns = analysis_table1.table1_columns(scores)
    assert columns[2:] == [f"{p}:{m}" for p in ("creative", "verbose") for m in METHODS]
    for column in columns[2:]:
        pref, method = column.split(":")
        assert rows[0][column] == pytest.approx(_score(pref, "HelpSteer_train", method))
        assert rows[2][column] == pytest.approx(
            (_score(pref, "HelpSteer_train", method) + _score(pref, PERSONAL, method)) / 2)
    versus = {(r["preference"], r["method"]): r
              for r in analysis_table1.comparison_rows(scores)}
    assert versus[("creative", "amulet")]["paper"] == 0.56
    assert versus[("verbose", "base")]["paper"] == 0.30
    assert versus[("creative", "amulet")]["datasets"] == 2

    wins = analysis_table1.read_win_rates(tmp_path)
    pooled = {r["baseline"]: r for r in analysis_table1.pooled_win_tie_lose(wins)}
    assert pooled["la"]["win"] == 4 * 6 and pooled["la"]["settings"] == 4
    assert pooled["la"]["win_rate"] == pytest.approx(6 / 8)
    assert pooled["base"]["paper_win_rate"] is None  # pooled over datasets: no paper number
    personal = {r["baseline"]: r
                for r in analysis_table1.pooled_win_tie_lose(wins, PERSONAL)}
    assert personal["base"]["paper_win_rate"] == 0.90 and personal["la"]["settings"] == 2
    assert personal["beam"]["mean_setting_win_rate"] == pytest.approx(5 / 7)

    out = tmp_path / "table"
    assert analysis.main(["table1", "--results_dir", str(tmp_path), "--out", str(out)]) == 0
    assert (out / "win_tie_lose.png").read_bytes().startswith(PNG)
    table = json.loads((out / "table1.json").read_text())
    assert table["table1"] == json.loads(json.dumps(rows))


# ---- end to end on a tiny random model --------------------------------------------------------

QUESTIONS = [{"index": 7, "question": "What happens if you eat watermelon seeds?"},
             {"index": 9, "question": "Write a short poem about autumn rain."}]


def test_analysis_end_to_end_produces_every_figure_and_the_report(tmp_path, tiny_model_dirs,
                                                                   capsys):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "two.json").write_text(json.dumps(QUESTIONS))
    common = ["--model_name", str(tiny_model_dirs["llama"]), "--data_dir", str(data_dir),
              "--eval_data", "two", "--limit", "2", "--max_new_tokens", "4",
              "--device", "cpu", "--dtype", "float32"]
    ratio_sweep, t_sweep = tmp_path / "sweep_ratio", tmp_path / "sweep_T"
    assert analysis.main(["sweep", "--out", str(ratio_sweep), "--values", "0,2",
                          "--pref_name", "creative,verbose", *common]) == 0
    assert analysis.main(["sweep", "--out", str(t_sweep), "--axis", "T", "--values", "0,60",
                          "--pref_name", "concise", "--no_base", *common]) == 0
    ratio_data = json.loads((ratio_sweep / "sweep.json").read_text())
    points = {(p["pref"], p["method"], p["ratio"]) for p in ratio_data["points"]}
    assert points == {("creative", "la", 0.0), ("creative", "la", 2.0), ("verbose", "la", 0.0),
                      ("verbose", "la", 2.0), ("creative", "base", None)}
    for point in ratio_data["points"]:
        assert point["n"] == 2 and 1 <= point["values"]["length_tokens"] <= 4 + 1
        assert set(point["values"]) >= {p["key"] for p in ratio_data["panels"]} | {
            "mentions_preference"}
    t_data = json.loads((t_sweep / "sweep.json").read_text())
    assert sorted(p["ratio"] for p in t_data["points"]) == [0.0, amulet_ratio(60, 2, 2, 10)]
    for sweep in (ratio_sweep, t_sweep):
        assert (sweep / "sweep_indicators.png").read_bytes().startswith(PNG)

    identity = tmp_path / "identity"
    assert analysis.main(["identity", "--out", str(identity), "--pref_name", "creative",
                          "--pad_top_k", "10,200000", *common]) == 0
    faces = {r["face"]: r for r in json.loads((identity / "identity.json").read_text())["rows"]}
    assert len(faces) == 6
    for name, row in faces.items():
        if "top-10)" not in name:  # every face but PAD's top-10 must give Amulet's tokens
            assert row["identical_count"] == 2, name

    from config import RunConfig
    from DecodingMethodsModels.pipeline.runner import run

    grid = tmp_path / "grid"
    run(RunConfig(method="pref,la,amulet", model_name=str(tiny_model_dirs["llama"]),
                  eval_data="two", data_dir=str(data_dir), pref_name="creative",
                  output_dir=str(grid), max_new_tokens=4, device="cpu", dtype="float32"))
    results = tmp_path / "results"
    _hand_made_results(results)
    report = tmp_path / "report"
    assert analysis.main(["report", "--out", str(report), "--sweep", str(ratio_sweep),
                          str(t_sweep), "--results_dir", str(results), "--responses_dir",
                          str(grid), "--identity",
                          str(identity / "identity.json")]) == 0
    text = (report / "report.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(figures) == sorted(["k_ratio.png", "sweep1_ratio.png", "sweep2_T.png",
                                      "win_tie_lose.png"])
    for figure in figures:
        assert (report / figure).read_bytes().startswith(PNG)
        assert (report / figure.replace(".png", ".json").replace("k_ratio", "k_table")
                ).is_file()
    for question in QUESTIONS:
        assert question["question"] in text  # the side-by-side view
    assert "creative, la, r = 2" in text and "Token identity" in text
    across_methods = text.split("the same questions across methods")[1]
    assert "creative / tiny-llama / two" in across_methods
    for method in ("pref", "la", "amulet"):
        assert across_methods.count(f"- *{method}*: ") == 2
    capsys.readouterr()


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert analysis.main(["sweep", "--from_responses", str(tmp_path / "nowhere")]) == 2
    assert analysis.main(["sweep", "--values", "1,x", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
