"""`--help` of every entry point exits 0, says what the script does in whole sentences, and
shows the defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import cli_env

ROOT = Path(__file__).resolve().parent.parent

# (script, what the help must show, whitespace normalised)
HELP = [
    ("main.py", ["--batch_size BATCH_SIZE questions decoded at once (la and amulet run 2 rows "
                 "per question) (default: 8)",
                 "--num_threads auto|N"]),
    ("evals/gpt_evals.py", ["--results_dir RESULTS_DIR tables, JSON and figures (default: "
                            "results/)", "--judge_max_tokens JUDGE_MAX_TOKENS the judge's answer "
                            "length limit (default: the protocol's: amulet: 5, args: 2048)",
                            "--num_threads auto|N local judge: torch CPU threads (default auto"]),
    ("evals/rm_evals.py", ["--batch_size BATCH_SIZE conversations per forward pass (default: 8)",
                           "--num_threads auto|N"]),
    ("evals/efficiency.py", ["--num_threads auto|N, --threads auto|N"]),
    ("data/fetch_benchmarks.py", ["Fetch the paper's four benchmark files (pinned by sha256), "
                                  "or check copies you already have with --verify DIR.",
                                  f"(default: {ROOT / 'data'})"]),
    ("evals/analysis.py sweep", ["--num_threads auto|N, --threads auto|N",
                                 f"(default: {ROOT / 'data'})"]),
    ("evals/analysis.py identity", ["--num_threads auto|N, --threads auto|N"]),
]


@pytest.mark.parametrize(("script", "shows"), HELP, ids=[h[0] for h in HELP])
def test_help_shows_defaults(script, shows):
    script_path, *command = script.split(" ")  # "evals/analysis.py sweep": a subcommand's help
    argv = [sys.executable, str(ROOT / script_path), *command, "--help"]
    done = subprocess.run(argv, cwd=ROOT,
                          env=cli_env(COLUMNS="100"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not done.stderr, done.stderr
    text = " ".join(done.stdout.split())
    for fragment in shows:
        assert fragment in text
