"""Building vLLM engines (backends/vllm_engine.py, vllm_log.py, library/vllm_api.py) without
vLLM: the supported version, each construction failure vLLM 0.32 reports turned into one line
naming the setting to change, the CPU memory check, the known harmless log lines, and the
library's length checks and engine cache. The same failures through `main.py`:
tests/test_vllm_engine_cli.py."""

from __future__ import annotations

import gc
import logging
import weakref
from types import SimpleNamespace

import pytest

from DecodingMethodsModels.backends.vllm_engine import (
    CLI,
    construction_failure,
    memory_refusal,
    version_refusal,
)
from DecodingMethodsModels.errors import UserError

GIB = 2**30
SETTINGS = SimpleNamespace(max_model_len=8284, tensor_parallel_size=3,
                           kv_cache_memory_bytes=GIB // 1024)

# vLLM 0.32's own messages (config/model.py, v1/core/kv_cache_utils.py, v1/worker/*.py)
MESSAGES = {
    "length": "1 validation error for ModelConfig\n  Value error, User-specified max_model_len "
              "(8284) is greater than the derived max_model_len (max_position_embeddings=8192 "
              "or model_max_length=None in model's config.json). To allow overriding ...",
    "heads": "Total number of attention heads (2) must be divisible by tensor parallel size (3).",
    "kv": "To serve at least one request with the model's max seq len (8284), (0.36 GiB KV "
          "cache is needed, which is larger than the available KV cache memory (0.0 GiB). "
          "Try increasing `gpu_memory_utilization` ...",
    "kv_none": "No available memory for the cache blocks. Try increasing "
               "`gpu_memory_utilization` when initializing the engine ...",
    "free": "Free memory on device cuda:0 (1.2/79.1 GiB) on startup is less than desired GPU "
            "memory utilization (0.9, 71.2 GiB). Decrease GPU memory utilization ...",
    "oom": "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total capacity)",
}


@pytest.mark.parametrize(("version", "refused"), [
    ("0.32.0", False), ("0.32.1", False), ("0.32.0+cpu", False), (None, False),
    ("0.33.0", True), ("0.31.2", True), ("1.0.0", True),
])
def test_only_vllm_0_32_is_accepted(version, refused):
    reason = version_refusal(version)
    assert (reason is not None) == refused
    if refused:
        assert reason == (f"vLLM {version} is installed; this backend supports vLLM 0.32.x "
                          "(pip install -r requirements-vllm.txt)")


@pytest.mark.parametrize(("kind", "expected"), [
    ("length", "vLLM's engine needs 8284 tokens per request (the longest prompt plus the new "
               "tokens), more than the model's context of 8192 (max_position_embeddings in "
               "its config.json): lower --max_new_tokens"),
    ("heads", "the model has 2 attention heads, which do not divide by "
              "--vllm_tensor_parallel_size 3: use a size that divides 2"),
    ("kv", "vLLM's KV cache (0.000977 GiB) cannot hold one request of 8284 tokens (the longest "
           "prompt plus the new tokens): raise --vllm_kv_cache_gb, or lower --max_new_tokens"),
    ("kv_none", "vLLM's KV cache (0.000977 GiB) cannot hold one request of 8284 tokens (the "
                "longest prompt plus the new tokens): raise --vllm_kv_cache_gb, or lower "
                "--max_new_tokens"),
    ("free", "too little free memory to start vLLM (free / total: 1.2/79.1 GiB): free memory "
             "used by other processes, or lower --vllm_kv_cache_gb"),
    ("oom", "out of memory while building vLLM's engine (weights and a KV cache of 0.000977 "
            "GiB): lower --vllm_kv_cache_gb, spread the model over more GPUs "
            "(--vllm_tensor_parallel_size), or use a smaller model or dtype"),
])
def test_each_construction_failure_is_one_line_naming_the_flag(kind, expected):
    line = construction_failure(MESSAGES[kind], SETTINGS, CLI)
    assert line == expected
    assert "\n" not in line and "gpu_memory_utilization" not in line


def test_an_unknown_construction_failure_keeps_its_traceback():
    assert construction_failure("something vLLM never said", SETTINGS, CLI) is None


def test_a_cpu_kv_cache_over_the_available_memory_is_refused_before_allocating():
    assert memory_refusal(2 * GIB, 4 * GIB, CLI) is None
    assert memory_refusal(None, 4 * GIB, CLI) is None
    assert memory_refusal(5000 * GIB, 18 * GIB, CLI) == (
        "vLLM's KV cache of 5e+03 GiB is more than this machine's available memory (18 GiB): "
        "lower --vllm_kv_cache_gb")


def test_known_harmless_vllm_warnings_are_dropped_and_errors_kept():
    from DecodingMethodsModels.backends.vllm_log import KnownHarmless

    def record(level, message):
        return logging.LogRecord("vllm.engine", level, __file__, 1, message, None, None)

    keep = KnownHarmless()
    before = KnownHarmless.hidden
    harmless = ("This model does not officially support disabling chunked prefill. Disabling "
                "this manually may cause the engine to crash or produce incorrect outputs.")
    assert not keep.filter(record(logging.WARNING, harmless))
    assert not keep.filter(record(logging.WARNING, "Triton is installed, but doesn't include "
                                                   "CPU backend. Disabling Triton."))
    assert KnownHarmless.hidden == before + 2
    assert keep.filter(record(logging.ERROR, harmless))  # an error is never hidden
    assert keep.filter(record(logging.WARNING, "Some new warning nobody has explained"))


# ----- the library: lengths and the engine cache ---------------------------------------------

def test_library_refuses_a_prompt_and_budget_over_the_context_in_one_line():
    from DecodingMethodsModels.library.vllm_api import check_lengths

    pref, base = [[1] * 40, [1] * 90], [[1] * 30, [1] * 80]
    assert check_lengths(pref, base, 100, context=1024) == 190
    with pytest.raises(UserError) as err:
        check_lengths(pref, base, 960, context=1024)
    assert str(err.value) == ("question 1 needs 90 prompt tokens + 960 new tokens, more than "
                              "the model's context of 1024; lower max_new_tokens or shorten "
                              "the question")
    with pytest.raises(UserError, match="max_new_tokens must be >= 1"):
        check_lengths(pref, base, 0, context=1024)


class FakeEngine:
    def __init__(self, max_num_seqs, max_model_len):
        self.engine_settings = SimpleNamespace(max_num_seqs=max_num_seqs,
                                               max_model_len=max_model_len, model="folder")


@pytest.fixture
def fake_builds(monkeypatch):
    import DecodingMethodsModels.library.vllm_api as api

    built = []

    def build(model, tokenizer, max_num_seqs, needed, folder):
        built.append((max_num_seqs, needed, folder))
        return FakeEngine(max_num_seqs, max(needed or 0, api.MIN_LENGTH))

    monkeypatch.setattr(api, "_build", build)
    monkeypatch.setattr(api, "_ENGINES", {})
    monkeypatch.setattr(api, "_RETIRED", [])
    return api, built


def test_library_engine_cache_holds_its_model(fake_builds):
    """The cache is keyed by id(model): it must keep the model alive, or a later model could
    get the freed id and decode on the first model's engine."""
    api, built = fake_builds

    class Model:
        pass

    model = Model()
    alive = weakref.ref(model)
    api.engine_for(model, None, 16, 100)
    del model
    gc.collect()
    assert alive() is not None


def test_library_engine_rebuilt_for_another_max_num_seqs_or_longer_requests(fake_builds):
    api, built = fake_builds
    model = object()
    first = api.engine_for(model, None, 16, 100)
    assert api.engine_for(model, None, 16, 2000) is first  # fits: the same engine
    second = api.engine_for(model, None, 8, 100)
    assert second is not first and second.engine_settings.max_num_seqs == 8
    third = api.engine_for(model, None, 8, 5000)
    assert third.engine_settings.max_model_len >= 5000
    assert [b[0] for b in built] == [16, 8, 8]
    assert built[1][2] == "folder"  # a rebuild reuses the saved folder
    assert len(api._RETIRED) == 2


def test_another_vllm_series_is_refused_before_anything_loads(monkeypatch):
    """The CLI's and the library's refusal read the installed version from its metadata."""
    import importlib.util

    import DecodingMethodsModels.backends.vllm_engine as engine
    from config import config_from_args
    from DecodingMethodsModels.backends import vllm_refusal_of_library

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "vllm" else real(name, *a))
    monkeypatch.setattr(engine, "installed_vllm_version", lambda: "0.33.0")
    expected = ("vLLM 0.33.0 is installed; this backend supports vLLM 0.32.x (pip install -r "
                "requirements-vllm.txt)")
    with pytest.raises(UserError) as err:
        config_from_args(["--backend", "vllm", "--method", "la"])
    assert str(err.value) == expected
    assert vllm_refusal_of_library() == expected
    with pytest.raises(UserError, match="vLLM 0.33.0 is installed"):
        engine.check_version()  # the pair scheduler's check in the server


def test_an_engine_on_vllm_s_v2_runner_is_refused():
    from DecodingMethodsModels.backends.vllm_engine import check_runner

    check_runner(SimpleNamespace(vllm_config=SimpleNamespace(use_v2_model_runner=False)))
    with pytest.raises(UserError, match="this backend needs the V1 runner"):
        check_runner(SimpleNamespace(vllm_config=SimpleNamespace(use_v2_model_runner=True)))
