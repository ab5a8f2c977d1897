"""The command that starts vLLM's OpenAI-compatible server with the pairing processor and the
pair scheduler, as README.md beside this file shows it: the settings the pairs need (V1 runner,
chunked prefill off, async scheduling off, one engine) and vLLM's log quieted as in process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: the server imports the processor


def server_command(folder: str, port: int, *, max_num_seqs: int = 16,
                   max_model_len: int | None = None, dtype: str = "auto",
                   on_cpu: bool = False, kv_cache_bytes: int | None = None,
                   host: str = "127.0.0.1") -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of a pairing vLLM server for the model in `folder`."""
    from DecodingMethodsModels.backends.vllm_log import CONFIG_FILE, USER_SETTINGS

    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", folder, "--host", host, "--port", str(port),
               "--generation-config", "vllm", "--dtype", dtype,
               "--logits-processors",
               "DecodingMethodsModels.backends.vllm_pairing:PairedRuleProcessor",
               "--scheduler-cls",
               "DecodingMethodsModels.backends.vllm_pair_scheduler.PairScheduler",
               "--no-enable-chunked-prefill", "--no-async-scheduling",
               "--max-num-seqs", str(max_num_seqs)]
    if max_model_len is not None:
        command += ["--max-model-len", str(max_model_len)]
    if on_cpu:
        command += ["--enforce-eager"]
    if kv_cache_bytes is not None:
        command += ["--kv-cache-memory-bytes", str(kv_cache_bytes)]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, VLLM_USE_V2_MODEL_RUNNER="0")
    if not any(name in os.environ for name in USER_SETTINGS):
        env["VLLM_LOGGING_CONFIG_PATH"] = str(CONFIG_FILE)
    return command, env
