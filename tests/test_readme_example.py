"""DecodingMethodsModels/README.md's "Use it as a library" section runs as written, on the
embedded SmolLM2-135M-Instruct, and names only what the package exports: the documentation
cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys

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


def test_the_library_example_runs_and_its_routes_agree(tmp_path):
    blocks = python_blocks(library_section())
    assert blocks
    script = tmp_path / "example.py"
    script.write_text("\n".join(blocks))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert "same tokens: True" in lines
    assert "implicit PAD, same tokens: True" in lines
    assert len(done.stdout) > 200  # the answers and the streamed sample were printed
