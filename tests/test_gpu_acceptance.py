"""evals/bench/gpu_acceptance.py in its CPU form (`--device cpu --quick`, a tiny sharpened
Llama): every check runs (greedy la, amulet, implicit PAD and beam against hf, sampled pairs
across row counts, async scheduling off as shipped, the server refusing a bad spec and then
serving a pair) and holds, and the table is printed. The GPU form is run by hand."""

from __future__ import annotations

import json
import subprocess
import sys

from cli_helpers import ROOT, cli_env
from vllm_helpers import build_sharp_model, require_vllm

require_vllm()


def test_acceptance_script_runs_every_check_on_cpu(smol_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    model = build_sharp_model("llama", tokenizer, tmp_path / "m")
    out = tmp_path / "acceptance.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "evals" / "bench" / "gpu_acceptance.py"), "--device", "cpu",
         "--quick", "--model_name", str(model), "--out", str(out)],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    checks = [r["check"] for r in rows]
    for method in ("la", "amulet", "beam", "pad"):
        assert f"greedy {method}: vLLM = hf (float32)" in checks
    assert "async scheduling as shipped (off)" in checks
    assert "sampled la, amulet: same answers at 4 and 16 rows" in checks
    assert "server: a bad spec gets a 400" in checks
    assert "server: then serves la = hf" in checks
    assert all(r["passed"] for r in rows), rows
    assert "| check | holds | detail |" in done.stdout
