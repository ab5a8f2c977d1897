"""The runs part of evals/efficiency.py: whole main.py processes per backend and method.

A smoke run on a tiny random Llama (2 questions, 4 tokens: no timing is asserted), the vLLM
rows without vLLM, and the vLLM targets as a pure function of made-up numbers, with the exit
code they give. The vLLM rows themselves: tests/test_vllm_efficiency_runs.py."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [
    {"index": 0, "question": "Why is the sky blue?"},
    {"index": 1, "question": "Write a haiku about a long road through the hills after rain."},
    {"index": 2, "question": "Hi"},
]


def run_runs(model_dir: Path, root: Path, *flags: str) -> tuple[subprocess.CompletedProcess,
                                                               Path]:
    (root / "three.json").write_text(json.dumps(QUESTIONS))
    out = root / "bench" / "runs.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMULET_DATA")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(ROOT / "evals" / "efficiency.py"), "--only", "runs",
         "--model_name", str(model_dir), "--data_dir", str(root), "--eval_data", "three",
         "--dataset_questions", "2", "--batch_size", "2", "--max_new_tokens", "4",
         "--iteration_num", "2", "--out", str(out), *flags],
        capture_output=True, text=True, cwd=str(ROOT), env=env, timeout=900,
    )
    return done, out


def test_only_runs_times_whole_main_py_runs_and_counts_written_tokens(tiny_model_dirs,
                                                                       tmp_path):
    from evals.bench.efficiency_runs import NOT_INSTALLED, row_key, vllm_installed

    flags = () if not vllm_installed() else ("--run_backends", "hf")  # vLLM: its own test
    done, out = run_runs(tiny_model_dirs["llama"], tmp_path, *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {row_key(r): r for r in report["runs"]["rows"]}
    for key in ("hf:pref", "hf:amulet"):
        row = rows[key]
        assert row["status"] == "measured" and row["questions"] == 2, row
        assert 0 < row["decode_seconds"] < row["process_seconds"]
        assert row["startup_seconds"] == pytest.approx(
            row["process_seconds"] - row["decode_seconds"], abs=1e-3)
        # re-tokenised text need not give back the generated count (a random model's tokens
        # merge and split): both are kept, tokens/s uses the written responses' count
        assert row["response_tokens"] > 0 and 0 < row["generated_tokens"] <= 2 * 4
        assert row["generated_tokens_per_second"] == pytest.approx(
            row["generated_tokens"] / row["decode_seconds"])
        assert row["tokens_per_second"] == pytest.approx(
            row["response_tokens"] / row["decode_seconds"])
        assert row["torch_threads"] == 1  # OMP_NUM_THREADS=1 reaches the run
        assert row["command"].startswith("python main.py --backend hf --method ")
    if not flags:
        for key in ("vllm:pref", "vllm:amulet", "vllm:pref:sampled", "vllm:amulet:sampled"):
            assert rows[key]["status"] == NOT_INSTALLED, key
        assert f"| vllm | amulet | {NOT_INSTALLED} |" in done.stdout
        assert f"| vllm | amulet (sampled) | {NOT_INSTALLED} |" in done.stdout
    assert all(t["holds"] is None for t in report["targets"])  # nothing judged: not measured
    assert "| backend | method | tokens | decode s | start-up s |" in done.stdout
    assert out.with_suffix(".md").read_text() == done.stdout.rstrip("\n") + "\n"


def test_vllm_rows_say_not_installed_without_running_anything(monkeypatch, tmp_path):
    import evals.bench.efficiency_runs as runs

    monkeypatch.setattr(runs, "vllm_installed", lambda: False)
    monkeypatch.setattr(runs.subprocess, "run", lambda *a, **k: pytest.fail("ran a process"))
    args = argparse.Namespace(
        model_name="m", data_dir="d", eval_data="e", pref_name="creative", dataset_questions=64,
        batch_size=8, max_new_tokens=128, iteration_num=60, alpha=2.0, player_lambda=2.0,
        eta=10.0, device="cpu", dtype="auto", threads=None)
    row = runs.measure_run(args, "vllm", "amulet", None, tmp_path)
    assert row["status"] == runs.NOT_INSTALLED
    assert "--backend vllm --method amulet" in row["command"]
    assert "--vllm_max_num_seqs 16" in row["command"]  # 8 questions in flight: 16 rows
    assert "--limit 64 --batch_size 8 --max_new_tokens 128" in row["command"]
    assert "--do_sample" not in row["command"]
    sampled = runs.measure_run(args, "vllm", "amulet", None, tmp_path, sampled=True)
    assert sampled["sampled"] and sampled["status"] == runs.NOT_INSTALLED
    assert sampled["command"].endswith("--do_sample --top_p 0.95 --temperature 0.7")


def rows_of(hf_amulet: float, vllm_pref: float | None, vllm_amulet: float | None,
            sampled: tuple = (None, None)) -> list[dict]:
    """Rows of the runs part; `sampled` = (vLLM sampled pref, vLLM sampled amulet) tokens/s,
    None: the greedy ones'."""
    def row(backend, method, tps, is_sampled=False):
        status = "measured" if tps is not None else "not measured: vLLM not installed"
        return {"backend": backend, "method": method, "sampled": is_sampled, "status": status,
                "tokens_per_second": tps}

    s_pref, s_amulet = (vllm_pref if sampled[0] is None else sampled[0],
                        vllm_amulet if sampled[1] is None else sampled[1])
    return [row("hf", "pref", 20.0), row("hf", "amulet", hf_amulet),
            row("vllm", "pref", vllm_pref), row("vllm", "amulet", vllm_amulet),
            row("vllm", "pref", s_pref, True), row("vllm", "amulet", s_amulet, True)]


@pytest.mark.parametrize(("numbers", "holds"), [
    ((10.0, 30.0, 16.0), [True, True, True]),     # 16 >= 10 and 16 >= 0.5 * 30
    ((10.0, 40.0, 16.0), [True, False, False]),   # 16 < 0.5 * 40
    ((20.0, 30.0, 16.0), [False, True, True]),    # 16 < hf's 20
    ((10.0, 30.0, 16.0, (30.0, 14.0)), [True, True, False]),  # sampled: 14 < 0.5 * 30
    ((10.0, 40.0, 16.0, (30.0, 15.0)), [True, False, True]),  # sampled: 15 >= 0.5 * 30
])
def test_runs_targets_judge_vllm_amulet_against_hf_amulet_and_vllm_pref(numbers, holds):
    from evals.bench.efficiency_runs import runs_targets

    targets = runs_targets(rows_of(*numbers), judge=True)
    assert [t["holds"] for t in targets] == holds
    assert targets[0]["measured"] == pytest.approx(numbers[2] / numbers[0])
    assert targets[1]["measured"] == pytest.approx(numbers[2] / numbers[1])
    s_pref, s_amulet = numbers[3] if len(numbers) > 3 else numbers[1:3]
    assert targets[2]["measured"] == pytest.approx(s_amulet / s_pref)
    assert [t["holds"] for t in runs_targets(rows_of(*numbers), judge=False)] == [None] * 3


def test_runs_targets_stay_open_with_the_reason_when_vllm_is_missing():
    from evals.bench.efficiency_report import failed_targets
    from evals.bench.efficiency_runs import NOT_INSTALLED, runs_targets

    targets = runs_targets(rows_of(10.0, None, None), judge=True)
    assert [(t["measured"], t["holds"], t["note"]) for t in targets] == [
        (None, None, NOT_INSTALLED)] * 3
    assert failed_targets(targets) == []


def test_a_failed_run_fails_its_targets():
    from evals.bench.efficiency_runs import runs_targets

    rows = rows_of(10.0, 30.0, 16.0)
    rows[3] = {**rows[3], "status": "failed (exit 2): error: out of memory",
               "tokens_per_second": None}
    targets = runs_targets(rows, judge=True)
    assert [t["holds"] for t in targets] == [False, False, True]
    assert targets[0]["note"] == "failed (exit 2): error: out of memory"


@pytest.mark.parametrize(("vllm_amulet", "code"), [(4.0, 1), (16.0, 0), (None, 0)])
def test_main_exits_1_when_a_measured_runs_target_fails(monkeypatch, capsys, tmp_path,
                                                       vllm_amulet, code):
    import evals.bench.efficiency_cli as efficiency
    from evals.bench.efficiency_runs import runs_targets

    def fake_run(args):
        rows = rows_of(10.0, 30.0 if vllm_amulet else None, vllm_amulet)
        return {"targets": runs_targets(rows, judge=not args.quick)}

    monkeypatch.setattr(efficiency, "run", fake_run)
    assert efficiency.main(["--only", "runs", "--out", str(tmp_path / "r.json")]) == code
    err = capsys.readouterr().err.strip()
    if code:
        assert err.startswith("3 of 3 targets failed: vLLM amulet tokens/s / hf amulet")


def test_quick_leaves_the_runs_out_unless_asked_for():
    from evals.bench.efficiency_cli import parse_args

    assert "runs" in parse_args(["--quick"]).skip
    assert parse_args(["--quick", "--only", "runs"]).skip == set(
        parse_args([]).skip | {"methods", "memory", "cost", "sweep", "beam", "cfg", "library",
                               "dataset"})
    assert "runs" not in parse_args([]).skip
