"""--backend on the command line and in the fingerprint, checked without vLLM: what vLLM
cannot run is refused in one line before anything loads, and so is --backend vllm without
vLLM installed; only a non-hf backend adds a key to the fingerprint."""

from __future__ import annotations

import importlib.util

import pytest

from config import RunConfig, config_from_args
from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.pipeline.eval_data import Dataset, Question
from DecodingMethodsModels.pipeline.plan import PlannedRun, fingerprint


def planned(method: str = "la") -> PlannedRun:
    dataset = Dataset("demo", "demo.json", "0" * 64, (Question(0, "Why?"),))
    return PlannedRun(method, "creative", "Be creative.", dataset, "out")


@pytest.fixture
def vllm_present(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "vllm" else real(name, *a))


@pytest.mark.parametrize("args, fragment", [
    (["--method", "beam", "--do_sample"], "beam sampling"),
    (["--method", "args", "--rm_name", "rm"], "run --method args with --backend hf"),
    (["--method", "pad", "--rm_name", "persrm"], "implicit PAD only (--rm_name self)"),
    (["--method", "pad", "--rm_name", "self", "--ignore_eos"], "--ignore_eos"),
    (["--method", "la", "--repetition_penalty", "1.2"], "repetition penalties"),
    (["--method", "la", "--multi_gpu"], "--vllm_tensor_parallel_size"),
    (["--method", "la", "--vllm_max_num_seqs", "5"], "must be even"),
    (["--method", "la", "--vllm_kv_cache_gb", "0"], "--vllm_kv_cache_gb must be > 0"),
])
def test_refused_in_one_line(vllm_present, args, fragment):
    with pytest.raises(UserError, match=None) as err:
        config_from_args(["--backend", "vllm", *args])
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_refused_without_vllm(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(UserError, match="needs vLLM, which is not installed: pip install -r "
                                        "requirements-vllm.txt"):
        RunConfig(backend="vllm", method="la")


def test_supported_methods_accepted(vllm_present):
    config = config_from_args(["--backend", "vllm", "--method", "base,pref,beam,la,amulet"])
    assert config.backend == "vllm"
    config_from_args(["--backend", "vllm", "--method", "pad", "--rm_name", "self"])


def test_fingerprint_records_a_non_hf_backend_only(vllm_present):
    hf = fingerprint(RunConfig(device="cpu"), planned(), "m")
    assert "backend" not in hf  # the hf runs' fingerprints stay as they were: they resume
    vllm = fingerprint(RunConfig(device="cpu", backend="vllm"), planned(), "m")
    assert vllm["backend"] == "vllm"
    assert {k: v for k, v in vllm.items() if k != "backend"} == hf


def test_vllm_flags_without_the_backend_warn():
    config = RunConfig(vllm_max_num_seqs=8)
    assert "vllm_max_num_seqs only affect --backend vllm" in config.ineffective_flags(
        {"vllm_max_num_seqs"})


def test_library_backend_vllm_refused_without_vllm(monkeypatch, smol_tokenizer_dir):
    from transformers import AutoTokenizer

    from DecodingMethodsModels import personalise

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(UserError, match="backend='vllm' needs vLLM"):
        personalise(None, tokenizer, ["Why?"], method="la", backend="vllm")
    with pytest.raises(UserError, match="unknown backend 'tgi'"):
        personalise(None, tokenizer, ["Why?"], method="la", backend="tgi")
