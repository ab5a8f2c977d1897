"""`python main.py --backend vllm` as a user runs it: the same files as --backend hf (records of
base, pref, beam, la, amulet and implicit PAD), a sidecar and fingerprint that name the backend, a
complete run skipped, a removed run redone alone, and a larger --limit extending the files."""

from __future__ import annotations

import json

import pytest
from cli_helpers import demo_data, gen_args, run_cmd, run_main, torchrun_cmd
from vllm_helpers import build_sharp_model, require_vllm

require_vllm()

TIMEOUT = 900
METHODS = "base,pref,beam,la,amulet"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    model = build_sharp_model("llama", tokenizer, tmp_path_factory.mktemp("vllm_cli") / "m")
    return model, demo_data(tmp_path_factory)


def run(setup, out, *extra, backend="hf", method=METHODS):
    model, data = setup
    args = gen_args(model, data, out, "--backend", backend, *extra, method=method,
                    max_new_tokens=12, batch_size=2)
    result = run_main(args, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result.stderr


def records(out, method):
    folder = next(out.glob("creative/*/demo"))
    return json.loads((folder / f"{method}.json").read_text())


def meta(out, method):
    folder = next(out.glob("creative/*/demo"))
    return json.loads((folder / f"{method}.meta.json").read_text())


@pytest.fixture(scope="module")
def hf_out(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_out")
    run(setup, out, "--limit", "6")
    run(setup, out, "--limit", "6", "--rm_name", "self", method="pad")
    return out


def test_vllm_run_writes_hf_files_resumes_and_extends(setup, hf_out, tmp_path):
    run(setup, tmp_path, "--limit", "3", backend="vllm")
    for method in METHODS.split(","):
        assert records(tmp_path, method) == records(hf_out, method)[:3], method
        sidecar = meta(tmp_path, method)
        assert sidecar["fingerprint"]["backend"] == "vllm"
        backend = sidecar["environment"]["backend"]
        assert backend["name"] == "vllm" and backend["vllm_version"]
        assert "backend" not in meta(hf_out, method)["fingerprint"]
    assert len({r["response"] for r in records(tmp_path, "la")}) > 1

    # a larger --limit decodes only the new questions; the files are hf's --limit 6 files
    err = run(setup, tmp_path, "--limit", "6", backend="vllm")
    assert "3 of 6 questions to decode" in err
    for method in METHODS.split(","):
        assert records(tmp_path, method) == records(hf_out, method), method

    # complete runs are skipped; a removed one is redone alone, the same
    folder = next(tmp_path.glob("creative/*/demo"))
    (folder / "la.json").unlink()
    (folder / "la.meta.json").unlink()
    err = run(setup, tmp_path, "--limit", "6", backend="vllm")
    assert "4 of 5 runs already complete: skipped" in err
    assert records(tmp_path, "la") == records(hf_out, "la")


def test_vllm_implicit_pad_same_file_as_hf(setup, hf_out, tmp_path):
    run(setup, tmp_path, "--limit", "6", "--rm_name", "self", backend="vllm", method="pad")
    assert records(tmp_path, "pad") == records(hf_out, "pad")
    assert meta(tmp_path, "pad")["fingerprint"]["backend"] == "vllm"


def test_vllm_batch_by_batch_same_file_as_hf(setup, hf_out, tmp_path):
    """--no_continuous_batching: each batch of --batch_size questions is one driver call."""
    run(setup, tmp_path, "--limit", "6", "--no_continuous_batching", backend="vllm",
        method="la,base")
    assert records(tmp_path, "la") == records(hf_out, "la")
    assert records(tmp_path, "base") == records(hf_out, "base")


def test_vllm_data_parallel_ranks_write_the_single_process_file(setup, hf_out, tmp_path):
    """torchrun with two CPU ranks, each with its own vLLM engine and its share of the batches:
    the ranks meet before vLLM starts its own torch.distributed world, and rank 0 writes the
    hf backend's file."""
    model, data = setup
    args = gen_args(model, data, tmp_path, "--backend", "vllm", "--limit", "6", method="la",
                    max_new_tokens=12, batch_size=2)
    done = run_cmd(torchrun_cmd(2, args), timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert records(tmp_path, "la") == records(hf_out, "la")
    parts = meta(tmp_path, "la")
    assert parts["fingerprint"]["backend"] == "vllm"
