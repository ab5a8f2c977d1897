"""DecodingMethodsModels/README.md's "Use it as a library" section runs as written, on the
embedded SmolLM2-135M-Instruct, and names only what the package exports: the documentation
cannot rot."""

from __future__ import annotations

import os
import re
import site
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

import DecodingMethodsModels

SECTION = "## Use it as a library"


def library_section() -> str:
    readme = (ROOT / "DecodingMethodsModels" / "README.md").read_text()
    start = readme.index(f"\n{SECTION}\n")
    end = readme.index("\n## ", start + 1)
    assert readme[end:].startswith("\n## Scaling: one GPU, one node, several nodes\n")
    return readme[start:end]


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_the_library_section_names_only_exported_callables():
    section = library_section()
    named = set(re.findall(r"^\| `(\w+)[`(]", section, flags=re.M))
    named |= set(re.findall(r"^\| `\w+`, `(\w+)`", section, flags=re.M))
    assert {"personalise", "AmuletProcessor", "LinearAlignmentProcessor", "TwoPromptProcessor",
            "amulet_generate", "la_generate", "ArgsProcessor", "PadProcessor",
            "decode_args", "decode_pad", "check_same_tokenizer",
            "pad_implicit_generate"} <= named
    for name in named:
        assert name in DecodingMethodsModels.__all__
        assert callable(getattr(DecodingMethodsModels, name))


def installed_python(venv: Path) -> Path:
    """The Python of a fresh virtualenv at `venv` into which `pip install --no-deps -e` has
    installed this repository, as the README says; the virtualenv reaches the packages of the
    Python running the tests (torch, transformers, the embedded model) through a .pth file,
    so nothing is downloaded."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    site_dir = subprocess.run([str(python), "-c", "import sysconfig; "
                               "print(sysconfig.get_paths()['purelib'])"], check=True,
                              capture_output=True, text=True).stdout.strip()
    Path(site_dir, "test_runner_packages.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n")
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps",
                           "--no-build-isolation", "--no-index", "-e", str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return python


def test_the_library_example_runs_outside_the_repository_once_installed(tmp_path):
    """The example runs from another folder, with no PYTHONPATH, by the Python of an
    environment into which the project was installed with `pip install -e .`."""
    python = installed_python(tmp_path / "venv")
    blocks = python_blocks(library_section())
    assert blocks
    script = tmp_path / "example.py"
    script.write_text("\n".join(blocks))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    where = subprocess.run([str(python), "-c", "import DecodingMethodsModels as m; "
                            "print(m.__file__)"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
    assert where.stdout.strip() == str(ROOT / "DecodingMethodsModels" / "__init__.py"), where
    done = subprocess.run([str(python), str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert "same tokens: True" in lines
    assert "implicit PAD, same tokens: True" in lines
    assert len(done.stdout) > 200  # the answers and the streamed sample were printed
