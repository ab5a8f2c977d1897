"""The runs part of evals/efficiency.py with vLLM installed: all four whole runs (hf and vLLM,
pref and amulet) on a tiny sharpened Llama, 2 questions and 4 tokens, and both vLLM targets
measured (not judged: --quick). Skipped without vLLM, failed under REQUIRE_VLLM=1."""

from __future__ import annotations

import json

from test_efficiency_runs import run_runs
from vllm_helpers import build_sharp_model, require_vllm

require_vllm()


def test_only_runs_measures_vllm_pref_and_amulet_beside_hf(smol_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    model = build_sharp_model("llama", tokenizer, tmp_path / "m")
    done, out = run_runs(model, tmp_path, "--quick", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {f"{r['backend']}:{r['method']}": r for r in report["runs"]["rows"]}
    assert set(rows) == {"hf:pref", "hf:amulet", "vllm:pref", "vllm:amulet"}
    for key, row in rows.items():
        assert row["status"] == "measured", (key, row["status"])
        assert row["generated_tokens"] > 0 and row["tokens_per_second"] > 0
    assert "--vllm_max_num_seqs 4" in rows["vllm:amulet"]["command"]  # 2 pairs in flight
    assert [t["measured"] is not None for t in report["targets"]] == [True, True]
    assert all(t["holds"] is None for t in report["targets"])  # --quick judges nothing
