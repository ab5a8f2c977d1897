"""How the efficiency benchmark measures peak memory: on CPU, the RSS high-water mark of a
fresh process (the entry script re-run with --probe) running one case; on CUDA, the
allocator's peak in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from evals.bench.efficiency_cases import (
    Case,
    Workload,
    build_workload,
    load,
    questions_of,
    run_case,
    say,
)
from evals.errors import EvalFailure

ROOT = Path(__file__).resolve().parents[2]
ENTRY_SCRIPT = ROOT / "evals" / "efficiency.py"
PROBE_PREFIX = "EFFICIENCY_PROBE "
MEMORY_NOTE = {
    "rss": "peak RSS (VmHWM) of a fresh process running the method once, minus its RSS after "
           "loading the model and a 2-token warm-up (Linux /proc/self/clear_refs); glibc malloc "
           "as configured by default, so heap fragmentation counts",
    "live": "peak RSS (VmHWM) of a fresh process running the method once, minus its RSS after "
            "loading the model and a 2-token warm-up (Linux /proc/self/clear_refs), with glibc "
            "told to map every allocation of 64 KiB or more on its own and unmap it on free "
            "(MALLOC_MMAP_THRESHOLD_=65536), so the peak follows live tensors, not fragmentation",
    "cuda": "torch.cuda.max_memory_allocated during the method minus memory allocated before it",
    "off": "not measured",
}


def memory_mode(args, device: str) -> str:
    if args.memory == "off" or "memory" in args.skip:
        return "off"
    if device.startswith("cuda"):
        return "cuda"
    if sys.platform.startswith("linux") and os.access("/proc/self/clear_refs", os.W_OK):
        return "live" if args.memory == "live" else "rss"
    return "off"


def rss_mb(field_name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field_name} missing from /proc/self/status")


def probe_memory(args) -> int:
    """Child process: load, warm up on 2 tokens, reset the RSS high-water mark, run one case."""
    case = Case.from_key(args.probe)
    tokenizer, model, _, _ = load(args)
    work = build_workload(args, tokenizer, model, questions_of(args, args.limit))
    run_case(Case("pref"), args, model, work, max_new_tokens=2, batches=[[0]])
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = rss_mb("VmRSS")
    run_case(case, args, model, work)
    peak = rss_mb("VmHWM")
    print(PROBE_PREFIX + json.dumps({"peak_rss_mb": peak, "peak_above_loaded_mb": peak - before}))
    return 0


def measure_memory(cases: list[Case], args, model, source, work: Workload,
                   mode: str) -> dict[str, dict]:
    if mode == "cuda":
        return {c.key: cuda_peak(c, args, model, work) for c in cases}
    if mode == "off":
        return {}
    import shutil

    copy = saved_copy(model, args) if source.gguf_file else None  # GGUF converts slowly
    model_path = str(copy) if copy else args.model_name
    results = {}
    try:
        for case in cases:
            results[case.key] = rss_child(case, args, model_path, live=mode == "live")
            say(f"memory {case.key}: {results[case.key]['peak_above_loaded_mb']:.0f} MB "
                "above loaded")
    finally:
        if copy:
            shutil.rmtree(copy, ignore_errors=True)
    return results


def saved_copy(model, args) -> Path:
    import tempfile

    from DecodingMethodsModels.models.loading import load_tokenizer, resolve_model

    directory = Path(tempfile.mkdtemp(prefix="efficiency_model_"))
    model.save_pretrained(directory)
    load_tokenizer(resolve_model(args.model_name)).save_pretrained(directory)
    return directory


def rss_child(case: Case, args, model_path: str, live: bool) -> dict:
    argv = [sys.executable, str(ENTRY_SCRIPT), *forwarded_flags(args),
            "--probe", case.key, "--probe_model", model_path]
    env = dict(os.environ)
    if live:  # a fixed threshold also stops glibc from raising it as large blocks are freed
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    done = subprocess.run(argv, capture_output=True, text=True, cwd=str(ROOT), env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(PROBE_PREFIX)]
    if done.returncode != 0 or not lines:
        raise EvalFailure(f"memory probe for {case.key} failed: {done.stderr.strip()[-500:]}")
    return json.loads(lines[-1][len(PROBE_PREFIX):])


def forwarded_flags(args) -> list[str]:
    """The resolved workload flags, so a child decodes exactly what the parent timed."""
    flags = []
    for name in ("model_name", "data_dir", "eval_data", "limit", "pref_name", "batch_size",
                 "max_new_tokens", "num_beams", "iteration_num", "alpha", "player_lambda",
                 "eta", "reinforce_ratio", "device", "dtype", "threads"):
        value = getattr(args, name)
        if value is not None:
            flags += [f"--{name}", str(value)]
    return flags


def cuda_peak(case: Case, args, model, work: Workload) -> dict:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run_case(case, args, model, work)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"peak_rss_mb": peak / 2**20, "peak_above_loaded_mb": (peak - before) / 2**20}
