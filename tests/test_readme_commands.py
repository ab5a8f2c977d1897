"""Every `python main.py ...` and `python evals/NAME.py ...` command that the three READMEs show
names a script that exists and flags its parser accepts (parsed only, nothing runs), so a moved
entry point or a renamed flag cannot leave a README command behind."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex

import pytest
from conftest import ROOT

READMES = ["README.md", "DecodingMethodsModels/README.md", "evals/README.md"]
COMMAND = re.compile(r"(?:^|\s)(?:\S*/)?python3?\s+(main\.py|evals/\w+\.py)(\s.*)?$")


class Parsed(BaseException):
    """Raised by the patched parser once the command line is parsed: stop before any work."""


def shell_lines(markdown: str) -> list[str]:
    """The lines of the ```bash blocks, continuation lines joined, comments dropped."""
    blocks = re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.S | re.M)
    joined = "\n".join(re.sub(r"\\\n\s*", " ", block) for block in blocks)
    return [line.split(" # ")[0].strip() for line in joined.splitlines()]


def readme_commands() -> list[tuple[str, str, list[str]]]:
    """(README, script, argv) of every runnable command; a command with a placeholder
    (`...`, a shell variable) is a pattern, not a command, and is left out."""
    found = []
    for name in READMES:
        for line in shell_lines((ROOT / name).read_text()):
            match = COMMAND.search(line)
            if match and "..." not in line and "$" not in line:
                found.append((name, match.group(1), shlex.split(match.group(2) or "")))
    return found


def parse_only(script: str, argv: list[str], monkeypatch) -> argparse.Namespace:
    path = ROOT / script
    assert path.is_file(), f"{script} does not exist"
    spec = importlib.util.spec_from_file_location(f"readme_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    try:
        module.main(argv)
    except Parsed as done:
        return done.args[0]
    raise AssertionError(f"{script} returned without parsing its command line")


def test_the_readmes_show_commands_of_every_entry_point():
    scripts = {script for _, script, _ in readme_commands()}
    assert {"main.py", "evals/gpt_evals.py", "evals/rm_evals.py", "evals/analysis.py",
            "evals/efficiency.py", "evals/rg_bench.py", "evals/library_bench.py"} <= scripts


@pytest.mark.parametrize("readme, script, argv", readme_commands(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_a_readme_command_parses(readme, script, argv, monkeypatch, capsys):
    try:
        parse_only(script, argv, monkeypatch)
    except SystemExit as exit_:
        pytest.fail(f"{readme}: python {script} {shlex.join(argv)} -> exit {exit_.code}: "
                    f"{capsys.readouterr().err.strip()}")


def test_a_wrong_flag_is_caught(monkeypatch):
    with pytest.raises(SystemExit):
        parse_only("evals/rm_evals.py", ["--no_such_flag"], monkeypatch)
    assert readme_commands()  # and the commands above were found at all


def test_the_top_readmes_commands_run_the_virtualenvs_python():
    """A bare `python` outside the virtualenv lacks torch: every command README.md shows (code
    blocks and inline code) names `.venv/bin/python`, except the one that makes the
    virtualenv."""
    text = (ROOT / "README.md").read_text()
    code = re.findall(r"^```\w*\n(.*?)^```", text, flags=re.S | re.M)
    code += re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))
    bare = [m.group(0) for snippet in code
            for m in re.finditer(r"(?<![\w/.-])python3?\s+\S+", snippet)
            if m.group(0) != "python3 -m"]
    assert not bare, f"commands with a bare python: {bare}"
