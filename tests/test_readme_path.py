"""The top README's path, run in order as a new user runs it: the first command, the tour's
commands read from README.md, a judge run against a scripted local OpenAI-compatible server,
and the analysis; on tiny settings (few tokens, one thread) in a temporary working directory,
writing nothing into the repository."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from cli_helpers import PYTHON, ROOT, cli_env, finish
from test_gpt_evals import judge_server  # noqa: F401 (the scripted judge, a fixture)

TINY = ["--max_new_tokens", "4", "--num_threads", "1"]
SETTING = ["--model_name", "SmolLM2-135M-Instruct", "--eval_data", "demo", "--pref_name",
           "creative"]


def tour_commands(readme: Path = ROOT / "README.md") -> list[list[str]]:
    """The commands of the README's "A quick tour" code blocks (continuations joined, comments
    dropped), each as ``[script, *args]`` without its interpreter."""
    text = readme.read_text(encoding="utf-8")
    section = text.split("\n## A quick tour", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0].endswith("python"):
                commands.append(words[1:])
    return commands


def _git_state() -> list[str]:
    out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return sorted(line for line in out.splitlines() if "__pycache__" not in line)


def _run(cwd: Path, script: str, *args: str, **env: str) -> tuple[str, str]:
    # one GGUF conversion for the whole path, as a user's machine keeps it
    env = cli_env(AMULET_CACHE_DIR=str(cwd / "gguf_cache"), **env)
    proc = subprocess.Popen([PYTHON, str(ROOT / script), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    code, out, err = finish(proc, timeout=900)
    assert code == 0, f"{script} {' '.join(args)} exited {code}:\n{err[-3000:]}"
    return out, err


def test_the_tour_names_the_generation_and_every_evaluation_step():
    scripts = [c[0] for c in tour_commands()]
    assert scripts[:2] == ["main.py", "main.py"]
    assert {"evals/gpt_evals.py", "evals/rm_evals.py", "evals/analysis.py"} <= set(scripts)


def test_the_readme_path_runs_in_order_on_a_fresh_folder(tmp_path, judge_server):  # noqa: F811
    before = _git_state()
    _run(tmp_path, "main.py", *TINY)  # the set-up's first command: 12 amulet answers
    demo = tmp_path / "responses" / "creative" / "SmolLM2-135M-Instruct" / "demo"
    assert (demo / "amulet.json").is_file()
    outputs = {}
    for script, *args in tour_commands():
        tiny = TINY if script == "main.py" else []
        outputs[" ".join([script, *args])] = _run(tmp_path, script, *args, *tiny)
    dry = next(out for cmd, (out, _) in outputs.items() if "--dry_run" in cmd)
    assert "demo: 4 questions x 4 pairs: 16 comparisons" in dry
    notes = "".join(err for _, err in outputs.values())
    assert "comparing 5 methods on the 4 questions they all answered (amulet has 12)" in notes
    assert "skipping pad (2 questions" in notes  # rm_evals finds pad and leaves it out
    rm_table = tmp_path / "results" / "rm_score" / "creative" / "SmolLM2-135M-Instruct" / "demo"
    assert (rm_table / "rm_table.csv").read_text().count("\n") == 1 + 5  # header, 5 methods

    # the judge, a scripted local OpenAI-compatible server, on the same files
    judge_server.prefer = lambda one, two: 1 if len(one) > len(two) else 2
    _run(tmp_path, "evals/gpt_evals.py", *SETTING, "--judge_base_url", judge_server.base_url,
         "--max_questions", "2", "--bootstrap", "0", "--no_plot", "--no_progress",
         OPENAI_API_KEY="EMPTY")
    assert judge_server.received <= 4 * 2
    out, _ = _run(tmp_path, "evals/analysis.py", "table1", "--rm_name", "loglik",
                  "--rm_label", "mean_logprob")
    assert "creative:amulet" in out and "| amulet | base | 1 |" in out  # Table 1, judge counts
    assert _git_state() == before  # nothing written into the repository
