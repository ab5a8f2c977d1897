"""Tensor parallelism on CPU: a tiny Llama whose heads divide by 2 (4 heads, 2 KV heads) split
over two vLLM worker processes (`--vllm_tensor_parallel_size 2`), under a KV cache small enough
that vLLM preempts rows. The pairing processor runs in the workers, so nothing it knows reaches
the driver: pairs are judged by the tokens returned. la, amulet and implicit PAD on 16
questions write the hf backend's files, the re-runs are recorded in the sidecars and named on
each run's "wrote" line, and NaN scores are the hf backend's one-line error."""

from __future__ import annotations

import json

import pytest
from cli_helpers import cli_env, gen_args, run_main, write_dataset
from vllm_helpers import build_sharp_model, require_vllm

require_vllm()

TIMEOUT = 900
STEPS = "32"
KV_GB = "0.0015"  # about 880 tokens per worker: six rows of a prompt and its answer
QUESTIONS = [f"Question {i}: name {'a few ' * (i % 5)}things that are "
             f"{['blue', 'green', 'red', 'soft'][i % 4]}." for i in range(16)]
TP2 = ("--backend", "vllm", "--vllm_tensor_parallel_size", "2", "--vllm_kv_cache_gb", KV_GB)


POISONED = ["Describe a xylophone made of glass."]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, smol_tokenizer_dir):
    """The model, with the embedding of one token of POISONED (and of no demo prompt) NaN."""
    from transformers import AutoTokenizer
    from vllm_helpers import prompts

    root = tmp_path_factory.mktemp("vllm_tp")
    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    clean = {i for row in prompts(tokenizer, QUESTIONS)[0] for i in row}
    poisoned = [i for i in prompts(tokenizer, POISONED)[0][0] if i not in clean][:1]
    model = build_sharp_model("llama", tokenizer, root / "tiny-tp", heads=4, kv_heads=2,
                              nan_ids=tuple(poisoned))
    write_dataset(root / "data", "demo", QUESTIONS)
    write_dataset(root / "data", "poisoned", POISONED)
    return model, root / "data"


def run(model, data, out, *extra, eval_data="demo"):
    args = gen_args(model, data, out, "--rm_name", "self", "--pref_name", "creative", *extra,
                    method="la,amulet,pad", max_new_tokens=int(STEPS), batch_size=16)
    args[args.index("--eval_data") + 1] = eval_data
    # one OpenMP thread per worker, each on its own core
    return run_main(args, env=cli_env(VLLM_CPU_OMP_THREADS_BIND="0|1"), timeout=TIMEOUT)


def files(out, method):
    folder = next(out.glob("creative/*/demo"))
    return ((folder / f"{method}.json").read_text(),
            json.loads((folder / f"{method}.meta.json").read_text()))


def test_tensor_parallel_under_preemption_writes_the_hf_files_and_nan_is_one_line(setup,
                                                                                  tmp_path):
    """One vLLM command (one engine start): the demo runs first, then the poisoned question's
    la run, whose NaN scores stop the command with the hf backend's one-line error."""
    model, data = setup
    hf = run(model, data, tmp_path / "hf")
    assert hf.returncode == 0, hf.stderr[-3000:]
    tp = run(model, data, tmp_path / "tp2", *TP2, eval_data="demo,poisoned")
    assert tp.returncode == 2, tp.stderr[-3000:]
    assert "Traceback" not in tp.stderr
    last = tp.stderr.strip().splitlines()[-1]
    assert last.startswith("error: la creative poisoned: the scores became NaN in batch 0"), last
    assert "question indices [0]" in last and "weights" in last
    assert not list(tmp_path.glob("tp2/creative/*/poisoned/la.json"))
    total = 0
    for method in ("la", "amulet", "pad"):
        want, _ = files(tmp_path / "hf", method)
        got, meta = files(tmp_path / "tp2", method)
        assert got == want, method
        assert meta["environment"]["backend"]["tensor_parallel_size"] == 2
        reran = meta["pairs_rerun"]
        assert reran["count"] == len(reran["questions"]) == sum(reran["reasons"].values())
        total += reran["count"]
        if reran["count"]:
            assert f"{method}.json ({reran['count']} pair(s) decoded again" in tp.stderr
        print(f"{method}: {reran['count']} pairs decoded again {reran['reasons']}")
    assert total > 0  # the cache was small enough to break pairs, and none slipped by
