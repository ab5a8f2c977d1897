"""Every evaluation entry point and analysis sub-command, given an input that is missing:
one line on stderr, exit code 2, no traceback, nothing written. Table-driven; each case is a
subprocess started in an empty working directory, all cases at once."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_helpers import PYTHON, ROOT, cli_env, finish, tree_state


@dataclass(frozen=True)
class Case:
    name: str
    script: str  # under evals/
    args: tuple[str, ...]  # '{ws}' is the workspace (responses/ and results/ with one run)
    expect: tuple[str, ...]  # fragments of the one error line


SETTING = ("--model_name", "Gen", "--eval_data", "toy", "--pref_name", "creative")
CASES = [
    Case("table1_no_results_folder", "analysis.py", ("table1",),
         ("--results_dir results: no such folder",)),
    Case("table1_named_folder_missing", "analysis.py", ("table1", "--results_dir", "{ws}/nope"),
         ("nope: no such folder",)),
    Case("table1_no_matching_scores", "analysis.py", ("table1", "--results_dir", "{ws}/results"),
         ("RLHFlow__ArmoRM-Llama3-8B-v0.1_dim6_avg.csv", "found: loglik_mean_logprob",
          "--rm_name loglik --rm_label mean_logprob")),
    Case("table1_empty_results", "analysis.py", ("table1", "--results_dir", "{ws}/empty"),
         ("no GPT-judge win rates", "run evals/rm_evals.py or evals/gpt_evals.py first")),
    Case("report_results_missing", "analysis.py",
         ("report", "--out", "{ws}/report", "--results_dir", "{ws}/nope"),
         ("--results_dir", "no such folder")),
    Case("report_responses_missing", "analysis.py",
         ("report", "--out", "{ws}/report", "--responses_dir", "{ws}/nope"),
         ("--responses_dir", "no such folder")),
    Case("report_identity_missing", "analysis.py",
         ("report", "--out", "{ws}/report", "--identity", "{ws}/nope.json"),
         ("cannot read --identity",)),
    Case("report_sweep_missing", "analysis.py",
         ("report", "--out", "{ws}/report", "--sweep", "{ws}/nope"), ("no such folder",)),
    Case("sweep_responses_missing", "analysis.py",
         ("sweep", "--from_responses", "{ws}/nope", "--out", "{ws}/sweep"),
         ("is not a directory of responses",)),
    Case("gpt_no_responses_folder", "gpt_evals.py", (*SETTING, "--dry_run"),
         ("output dir responses does not exist",)),
    Case("gpt_setting_missing", "gpt_evals.py",
         ("--output_dir", "{ws}/responses", "--model_name", "Gen", "--eval_data", "nope",
          "--pref_name", "creative", "--dry_run"), ("no ", "holds: toy")),
    Case("gpt_methods_missing", "gpt_evals.py",
         ("--output_dir", "{ws}/responses", *SETTING, "--dry_run"),
         ("missing base.json, beam.json",)),
    Case("rm_no_responses_folder", "rm_evals.py", ("--scorer", "none"),
         ("output dir responses does not exist",)),
    Case("rm_no_such_setting", "rm_evals.py",
         ("--output_dir", "{ws}/responses", "--pref_name", "nope", "--scorer", "none"),
         ("no setting under",)),
    Case("rm_none_with_a_scorer", "rm_evals.py",
         ("--output_dir", "{ws}/responses", "--scorer", "none", "--scorer", "loglik"),
         ("--scorer none (the indicators alone) takes no head and no other scorer",)),
    Case("rm_none_without_indicators", "rm_evals.py",
         ("--output_dir", "{ws}/responses", "--scorer", "none", "--no_indicators"),
         ("leaves nothing to compute",)),
    Case("rm_loglik_under_public_scoring", "rm_evals.py",
         ("--input_file", "{ws}/nope.json", "--scoring", "pad", "--scorer", "loglik"),
         ("--scorer loglik reads the project's conversations",)),
    Case("rm_input_file_missing", "rm_evals.py", ("--input_file", "{ws}/nope.json"),
         ("cannot read",)),
    Case("agreement_missing", "judge_agreement.py", ("{ws}/nope", "{ws}/nope2"),
         ("is neither a judgments CSV nor a results folder",)),
    Case("agreement_no_judgments", "judge_agreement.py", ("{ws}/results", "{ws}/results"),
         ("no *judgments.csv under",)),
    Case("efficiency_data_missing", "efficiency.py",
         ("--quick", "--data_dir", "{ws}/nope", "--eval_data", "toy"),
         ("nope (--data_dir) does not exist",)),
]


def _workspace(root: Path) -> None:
    run = root / "responses" / "creative" / "Gen" / "toy"
    run.mkdir(parents=True)
    for method in ("pref", "amulet"):
        records = [{"index": i, "question": f"Q{i}?", "preference": "Be creative.",
                    "response": f"{method} answer {i}"} for i in range(2)]
        (run / f"{method}.json").write_text(json.dumps(records))
    scores = root / "results" / "rm_score" / "creative" / "Gen" / "toy"
    scores.mkdir(parents=True)
    (scores / "loglik_mean_logprob_avg.csv").write_text("method,mean,std,n\npref,-2,0.1,2\n")
    (root / "empty").mkdir()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case started at once in its own empty working directory."""
    base = tmp_path_factory.mktemp("missing")
    running = {}
    for case in CASES:
        ws = base / case.name
        _workspace(ws)
        cwd = ws / "cwd"
        cwd.mkdir()
        args = [a.replace("{ws}", str(ws)) for a in case.args]
        before = tree_state(ws)
        proc = subprocess.Popen([PYTHON, str(ROOT / "evals" / case.script), *args], cwd=cwd,
                                env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        running[case.name] = (proc, ws, before)
    return {name: (*finish(proc), tree_state(ws) == before)
            for name, (proc, ws, before) in running.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_missing_input_is_one_line_exit_2_and_writes_nothing(case, outcomes):
    code, _, err, unchanged = outcomes[case.name]
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(fragment in lines[0] for fragment in case.expect), lines[0]
    assert unchanged, "a file was written or changed"
