"""The runs part of evals/efficiency.py with vLLM installed: all six whole runs (hf and vLLM,
pref and amulet, and vLLM's sampled pref and amulet) on a tiny sharpened Llama, 2 questions and
4 tokens, and every vLLM target measured (not judged: --quick). Skipped without vLLM, failed
under REQUIRE_VLLM=1."""

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
    from evals.bench.efficiency_runs import row_key

    rows = {row_key(r): r for r in report["runs"]["rows"]}
    assert set(rows) == {"hf:pref", "hf:amulet", "vllm:pref", "vllm:amulet",
                         "vllm:pref:sampled", "vllm:amulet:sampled"}
    for key, row in rows.items():
        assert row["status"] == "measured", (key, row["status"])
        assert row["generated_tokens"] > 0 and row["tokens_per_second"] > 0
    assert "--vllm_max_num_seqs 4" in rows["vllm:amulet"]["command"]  # 2 pairs in flight
    assert "--do_sample --top_p 0.95 --temperature 0.7" in rows["vllm:amulet:sampled"]["command"]
    assert [t["measured"] is not None for t in report["targets"]] == [True, True, True]
    assert all(t["holds"] is None for t in report["targets"])  # --quick judges nothing
