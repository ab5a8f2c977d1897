"""evals/costeer_bench.py end to end on tiny random models: every case runs, the SLM is the
size asked for, the table and the JSON agree. No timing is asserted (a shared machine)."""

from __future__ import annotations

import json

from evals.bench import costeer_bench


def test_every_case_runs_with_a_quarter_size_slm(tmp_path, capsys):
    (tmp_path / "two.json").write_text(json.dumps([
        {"index": 0, "question": "Why is the sky blue?"}, {"index": 1, "question": "Hi"}]))
    out = tmp_path / "costeer.json"
    code = costeer_bench.main([
        "--llm_hidden", "128", "--llm_layers", "2", "--data_dir", str(tmp_path),
        "--eval_data", "two", "--limit", "2", "--batch_size", "2", "--max_new_tokens", "3",
        "--num_threads", "1", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    for case in costeer_bench.CASES:
        assert report[case]["tokens"] == 2 * 3 and report[case]["tokens_per_s"] > 0
    assert report["costeer"]["rows_per_question"] == 3
    assert report["slm_parameters"] < report["llm_parameters"]
    table = capsys.readouterr().out
    assert "| costeer | 3 | 2 | 6 |" in table and "costeer / amulet tokens/s:" in table


def test_the_slm_is_the_size_asked_for():
    llm = costeer_bench.random_llama(1000, 512, 4, 0)
    slm = costeer_bench.quarter_model(llm, 1000, 0.25)
    ratio = costeer_bench.parameters(slm) / costeer_bench.parameters(llm)
    assert abs(ratio - 0.25) < 0.05 and slm.config.num_hidden_layers == 2


def test_bad_arguments_exit_2(capsys):
    assert costeer_bench.main(["--cases", "beam"]) == 2
    assert costeer_bench.main(["--llm_hidden", "100"]) == 2
    assert "error:" in capsys.readouterr().err
