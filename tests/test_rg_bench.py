"""evals/rg_bench.py end to end on a tiny random Llama: every case runs, the cached engines give
the naive references' tokens, and the targets are judged into the exit code. No timing is
asserted: a tiny model's speed on a shared machine means nothing."""

from __future__ import annotations

import json

import pytest

from evals.bench import rg_bench


def test_every_case_runs_and_engines_match_the_naive_references(tiny_model_dirs, tmp_path,
                                                                 one_torch_thread, capsys):
    (tmp_path / "two.json").write_text(json.dumps([
        {"index": 0, "question": "Why is the sky blue?"},
        {"index": 1, "question": "Hi"},
    ]))
    out = tmp_path / "rg.json"
    code = rg_bench.main([
        "--model_name", str(tiny_model_dirs["llama"]), "--data_dir", str(tmp_path),
        "--eval_data", "two", "--limit", "2", "--batch_size", "2", "--max_new_tokens", "4",
        "--cases", "all", "--out", str(out),
    ])
    report = json.loads(out.read_text())
    assert set(rg_bench.CASES) <= set(report)
    for method in ("implicit", "pad", "args"):
        assert report[method]["same_tokens_as_naive"] is True
    checks = {c["target"]: c for c in report["targets"]}
    assert all(c["measured"] is not None for c in checks.values())
    assert code == (1 if any(c["holds"] is False for c in checks.values()) else 0)
    table = capsys.readouterr().out
    assert "| args_naive | 2 |" in table and "| ARGS engine / naive ARGS |" in table
    assert out.with_suffix(".md").read_text() == table.rstrip("\n") + "\n"


@pytest.mark.parametrize(("pairs", "holds"), [
    ({"implicit": 5.0, "pref": 10.0}, True),
    ({"implicit": 3.0, "pref": 10.0}, False),
])
def test_targets_compare_tokens_per_second(pairs, holds):
    results = {case: {"tokens_per_s": value} for case, value in pairs.items()}
    checks = {c["target"]: c for c in rg_bench.targets(results)}
    assert checks["implicit PAD / pref"]["holds"] is holds
    assert checks["PAD engine / naive PAD"]["holds"] is None  # not run: not judged
