"""Every entry point exits 2 on a usage or input error and 1 when the work itself fails.

Each case runs the script in a subprocess, as a user would, and checks the exit code and that
the error is one line (argparse's usage block aside, which is two lines on stderr)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import cli_env

ROOT = Path(__file__).resolve().parent.parent
MISSING = "/nonexistent/amulet-test"

# (script, arguments, expected exit code); {tmp} is a fresh empty directory
CASES = [
    ("main.py", ["--no_such_flag"], 2),
    ("main.py", ["--data_dir", "{tmp}", "--eval_data", "nope", "--output_dir", "{tmp}/out"], 2),
    ("evals/gpt_evals.py", ["--no_such_flag"], 2),
    ("evals/gpt_evals.py", ["--output_dir", MISSING, "--model_name", "m", "--eval_data", "d",
                            "--pref_name", "creative"], 2),
    ("evals/rm_evals.py", ["--no_such_flag"], 2),
    ("evals/rm_evals.py", ["--output_dir", MISSING], 2),
    ("evals/efficiency.py", ["--no_such_flag"], 2),
    ("evals/efficiency.py", ["--limit", "0"], 2),
    ("evals/efficiency.py", ["--data_dir", "{tmp}", "--eval_data", "nope", "--skip", "memory",
                             "--out", "{tmp}/eff.json"], 2),
    ("data/fetch_benchmarks.py", ["--no_such_flag"], 2),
    ("data/fetch_benchmarks.py", ["--verify", MISSING], 2),
    ("data/fetch_benchmarks.py", ["--verify", "{tmp}"], 2),
]


def run_script(script: str, args: list[str], tmp: Path, **env: str):
    argv = [sys.executable, str(ROOT / script), *(a.replace("{tmp}", str(tmp)) for a in args)]
    return subprocess.run(argv, cwd=ROOT, env=cli_env(**env), capture_output=True, text=True,
                          timeout=180)


@pytest.mark.parametrize(("script", "args", "code"), CASES,
                         ids=[f"{s}:{' '.join(a)[:30]}" for s, a, _ in CASES])
def test_usage_and_input_errors_exit_2(script, args, code, tmp_path):
    done = run_script(script, args, tmp_path)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) >= 1 and (len(errors) == 1 or script == "data/fetch_benchmarks.py"), \
        done.stderr


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_judge_that_cannot_be_reached_exits_1(tmp_path):
    run = tmp_path / "responses" / "creative" / "M" / "toy"
    run.mkdir(parents=True)
    for method in ("pref", "amulet"):
        records = [{"index": 0, "question": "Why?", "preference": "p",
                    "response": f"{method} answer"}]
        (run / f"{method}.json").write_text(json.dumps(records))
    args = ["--output_dir", str(tmp_path / "responses"), "--results_dir", str(tmp_path / "r"),
            "--model_name", "M", "--eval_data", "toy", "--pref_name", "creative",
            "--methods", "pref,amulet", "--judge_base_url", f"http://127.0.0.1:{closed_port()}",
            "--max_retries", "0", "--timeout", "5", "--no_progress", "--no_plot"]
    done = run_script("evals/gpt_evals.py", args, tmp_path, OPENAI_API_KEY="sk-test-unused",
                      NO_PROXY="127.0.0.1")
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr


def test_download_that_fails_exits_1(tmp_path):
    # this machine is offline; the download fails at once (no route or no name resolution)
    done = run_script("data/fetch_benchmarks.py", ["--dest", str(tmp_path)], tmp_path,
                      HTTPS_PROXY="http://127.0.0.1:1", https_proxy="http://127.0.0.1:1")
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: could not download"), done.stderr
