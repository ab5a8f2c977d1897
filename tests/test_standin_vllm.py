"""The vLLM backend on the paper's checkpoints (stand-ins with their real tokenizers, templates,
EOS sets and generation configs, tests/standins.py): base, pref, beam, la, amulet and implicit
PAD write the hf backend's records, so the checkpoints' sampling defaults and Qwen2's repetition
penalty reach no method on vLLM either (the hf backend sets them aside: test_standin_decoding)."""

from __future__ import annotations

import json

import pytest
from cli_helpers import run_main, write_dataset
from standins import DECODERS
from vllm_helpers import require_vllm

require_vllm()

METHODS = "base,pref,beam,la,amulet,pad"
QUESTIONS = ["What is a good way to learn to cook pasta?", "Why is the sky blue?"]


def records(model, data, out, backend: str) -> dict[str, list[str]]:
    args = ["--model_name", str(model), "--data_dir", str(data), "--output_dir", str(out),
            "--eval_data", "demo", "--method", METHODS, "--rm_name", "self",
            "--max_new_tokens", "6", "--num_beams", "2", "--batch_size", "2", "--device", "cpu",
            "--backend", backend]
    result = run_main(args, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = next(out.glob("creative/*/demo"))
    return {m: [r["response"] for r in json.loads((folder / f"{m}.json").read_text())]
            for m in METHODS.split(",")}


@pytest.mark.parametrize("name", DECODERS)
def test_vllm_writes_the_hf_records_on_each_checkpoint(standin_dirs, tmp_path, name):
    write_dataset(tmp_path / "data", "demo", QUESTIONS)
    hf = records(standin_dirs[name], tmp_path / "data", tmp_path / "hf", "hf")
    vllm = records(standin_dirs[name], tmp_path / "data", tmp_path / "vllm", "vllm")
    assert vllm == hf
    assert any(text for texts in hf.values() for text in texts)  # not all stopped at once
