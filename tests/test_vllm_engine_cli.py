"""`python main.py --backend vllm` when the engine cannot be built: one line on stderr, exit 2,
no traceback, nothing written, for every failure a flag can provoke (KV cache too small,
lengths over the model's, heads that do not divide by the tensor-parallel size, a KV cache
over the machine's memory); and a run's stderr without vLLM's known harmless warnings, with
vLLM's errors still shown."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from cli_helpers import ROOT, cli_env, demo_data, gen_args, run_main
from vllm_helpers import build_sharp_model, require_vllm

require_vllm()

TIMEOUT = 900


@pytest.fixture(scope="module")
def model(tmp_path_factory, smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    return build_sharp_model("llama", tokenizer, tmp_path_factory.mktemp("engine_cli") / "m")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return demo_data(tmp_path_factory)


def one_line_error(model, data, out, *flags, max_new_tokens=8) -> str:
    args = gen_args(model, data, out, "--backend", "vllm", "--limit", "2", *flags, method="la",
                    max_new_tokens=max_new_tokens)
    done = run_main(args, timeout=TIMEOUT)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert not any(out.rglob("*.json")) if out.exists() else True  # nothing written
    return errors[0]


def test_kv_cache_too_small_is_one_line(model, data, tmp_path):
    line = one_line_error(model, data, tmp_path, "--vllm_kv_cache_gb", "0.00001")
    assert re.fullmatch(r"error: vLLM's KV cache \(1e-05 GiB\) cannot hold one request of \d+ "
                        r"tokens \(the longest prompt plus the new tokens\): raise "
                        r"--vllm_kv_cache_gb, or lower --max_new_tokens", line), line


def test_heads_that_do_not_divide_by_tensor_parallel_size_is_one_line(model, data, tmp_path):
    line = one_line_error(model, data, tmp_path, "--vllm_tensor_parallel_size", "3")
    assert line == ("error: the model has 2 attention heads, which do not divide by "
                    "--vllm_tensor_parallel_size 3: use a size that divides 2"), line


def test_kv_cache_over_the_machine_memory_is_refused_before_allocating(model, data, tmp_path):
    line = one_line_error(model, data, tmp_path, "--vllm_kv_cache_gb", "100000")
    assert line.startswith("error: vLLM's KV cache of 1e+05 GiB is more than this machine's "
                           "available memory ("), line
    assert line.endswith("GiB): lower --vllm_kv_cache_gb")


def test_lengths_over_the_model_s_as_vllm_derives_them_is_one_line(model, data, tmp_path):
    """vLLM takes the smallest length a config.json states (here seq_length 256 beside
    max_position_embeddings 1024), as with the GGUF model's first run, whose configuration
    is read only once converted: the run's own check passes, vLLM's engine refuses."""
    import shutil

    folder = tmp_path / "m_seq"
    shutil.copytree(model, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "seq_length": 256}))
    line = one_line_error(folder, data, tmp_path / "out", max_new_tokens=300)
    assert re.fullmatch(r"error: vLLM's engine needs \d+ tokens per request \(the longest "
                        r"prompt plus the new tokens\), more than the model's context of 256 "
                        r"\(seq_length in its config\.json\): lower --max_new_tokens", line), line


def test_a_run_shows_no_known_harmless_vllm_warning(model, data, tmp_path):
    from DecodingMethodsModels.backends.vllm_log import HARMLESS_PY_WARNINGS, KNOWN_HARMLESS

    args = gen_args(model, data, tmp_path, "--backend", "vllm", "--limit", "2", method="la",
                    max_new_tokens=4)
    done = run_main(args, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    patterns = [p for _, p in KNOWN_HARMLESS] + list(HARMLESS_PY_WARNINGS)
    for line in done.stderr.splitlines() + done.stdout.splitlines():
        assert not any(re.search(p, line) for p in patterns), line
    assert "known harmless warning(s) not shown" in done.stderr
    # requests go in vLLM 0.32's rendered form, so its deprecation of raw prompts never shows
    assert "Passing raw prompts" not in done.stdout + done.stderr
    assert "INFO" not in done.stdout + done.stderr  # vLLM's INFO lines are not shown
    assert re.search(r"wrote .*la\.json", done.stderr)  # the project's own lines are
    sidecar = json.loads(next(tmp_path.rglob("la.meta.json")).read_text())
    assert sidecar["environment"]["backend"]["async_scheduling"] is False  # the engine's own


@pytest.mark.parametrize("inherited", [False, True], ids=["fresh", "path-inherited"])
def test_vllm_errors_and_unknown_warnings_still_show(inherited):
    """vLLM's loggers under the backend's logging configuration, in a process of their own:
    an error and an unexplained warning reach stderr, a known harmless warning does not. Also
    in a process that inherits VLLM_LOGGING_CONFIG_PATH naming the project's file from a parent
    that called quiet_vllm_log (a test run, a launcher): vLLM configures no handler at import,
    so a warning there (Triton's on CPU) would reach stderr if that path were taken for the
    user's own."""
    code = (
        "import logging\n"
        "from DecodingMethodsModels.backends.vllm_log import quiet_vllm_log\n"
        "assert quiet_vllm_log()\n"
        "log = logging.getLogger('vllm.v1.engine.core')\n"
        "log.error('EngineCore failed: boom')\n"
        "log.warning('something new')\n"
        "log.warning('This model does not officially support disabling chunked prefill.')\n"
        "log.info('Resolved architecture: LlamaForCausalLM')\n"
    )
    env = {k: v for k, v in cli_env().items() if not k.startswith("VLLM_LOGGING")}
    if inherited:
        from DecodingMethodsModels.backends.vllm_log import CONFIG_FILE

        env["VLLM_LOGGING_CONFIG_PATH"] = str(CONFIG_FILE)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "EngineCore failed: boom" in done.stderr
    assert "something new" in done.stderr
    assert "chunked prefill" not in done.stderr + done.stdout
    assert "Resolved architecture" not in done.stderr + done.stdout


def test_library_refuses_a_budget_over_the_context_before_building_an_engine(model):
    """personalise(..., backend="vllm") checks prompts and max_new_tokens against the model's
    context (1024) in one line, as the hf backend's run does, instead of decoding five times
    and naming CLI flags."""
    from transformers import AutoTokenizer

    from DecodingMethodsModels import personalise
    from DecodingMethodsModels.errors import UserError

    tokenizer = AutoTokenizer.from_pretrained(model)
    with pytest.raises(UserError) as err:
        personalise(str(model), tokenizer, ["Why is the sky blue?"], method="la",
                    max_new_tokens=1000, backend="vllm")
    assert re.fullmatch(r"question 0 needs \d+ prompt tokens \+ 1000 new tokens, more than the "
                        r"model's context of 1024; lower max_new_tokens or shorten the "
                        r"question", str(err.value)), str(err.value)
