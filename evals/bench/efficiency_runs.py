"""The runs part of the efficiency benchmark: what a user's run costs, measured as a user runs it.

Each (backend, method) of RUN_CASES is a whole `main.py` process, started here as a
subprocess on the first --dataset_questions questions of --eval_data, at --batch_size and
--max_new_tokens, with torch's default threads unless --num_threads is given (the
environment, OMP_NUM_THREADS included, passes through unchanged). Nothing is warmed up: the
first batch pays what it pays in a user's run.

- decode seconds: the run's sidecar `decode_seconds`, the sum of its batches' times as the
  runner appends them (pipeline/decode.py), so model loading, prompt encoding and writing
  the final file (the start-up) are left out; start-up = process seconds - decode seconds.
- tokens: the written responses re-tokenised with the model's tokenizer (no special tokens,
  so no EOS), as a user counts them; the sidecar's `generated_tokens` (EOS included) beside.
- threads: the sidecar's `torch_threads`, what the decoding process actually used.

vLLM rows need vLLM importable by this Python; without it they read NOT_INSTALLED and their
targets stay open (not failures).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from evals.bench.efficiency_cases import say

ROOT = Path(__file__).resolve().parents[2]
# (backend, method, sampled): sampled runs draw with SAMPLING_FLAGS, the others are greedy
RUN_CASES = (("hf", "pref", False), ("hf", "amulet", False), ("vllm", "pref", False),
             ("vllm", "amulet", False), ("vllm", "pref", True), ("vllm", "amulet", True))
SAMPLING_FLAGS = ("--do_sample", "--top_p", "0.95", "--temperature", "0.7")
NOT_INSTALLED = "not measured: vLLM not installed"
# (target, numerator key, denominator key, factor): measured = num / den, holds if >= factor
RUN_TARGETS = (
    ("vLLM amulet tokens/s / hf amulet tokens/s (whole runs)", "vllm:amulet", "hf:amulet", 1.0),
    ("vLLM amulet tokens/s / vLLM pref tokens/s (whole runs)", "vllm:amulet", "vllm:pref", 0.5),
    ("vLLM sampled amulet tokens/s / vLLM sampled pref tokens/s (whole runs)",
     "vllm:amulet:sampled", "vllm:pref:sampled", 0.5),
)
GPU_COMMAND = (
    "python evals/efficiency.py --only runs --device cuda --dtype bfloat16 "
    "--model_name <model> --eval_data UltraFeedback_truthful_qa --dataset_questions 64 "
    "--batch_size 8 --max_new_tokens 128 --out benchmarks/efficiency_runs_gpu.json"
)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def even(n: int) -> int:
    return n + n % 2


def row_key(row: dict) -> str:
    """"backend:method", with ":sampled" for a sampled run (RUN_TARGETS name rows so)."""
    return f"{row['backend']}:{row['method']}" + (":sampled" if row.get("sampled") else "")


def run_command(args, backend: str, method: str, out_dir: Path,
                sampled: bool = False) -> list[str]:
    """The `main.py` command line of one run: what a user would type."""
    command = [sys.executable, str(ROOT / "main.py"), "--backend", backend, "--method", method,
               "--model_name", args.model_name, "--data_dir", str(args.data_dir),
               "--eval_data", args.eval_data, "--pref_name", args.pref_name,
               "--limit", str(args.dataset_questions), "--batch_size", str(args.batch_size),
               "--max_new_tokens", str(args.max_new_tokens),
               "--iteration_num", str(args.iteration_num), "--alpha", str(args.alpha),
               "--player_lambda", str(args.player_lambda), "--eta", str(args.eta),
               "--device", args.device, "--dtype", args.dtype,
               "--output_dir", str(out_dir), "--overwrite"]
    if backend == "vllm":  # batch_size questions in flight: one row each for pref, two for amulet
        rows = 2 * args.batch_size if method == "amulet" else even(args.batch_size)
        command += ["--vllm_max_num_seqs", str(rows)]
    if sampled:
        command += SAMPLING_FLAGS
    if args.threads:
        command += ["--num_threads", str(args.threads)]
    return command


def shown(command: list[str]) -> str:
    """The command as a user would type it (this Python as `python`, paths relative)."""
    words = ["python", *command[1:]]
    words[1] = "main.py"
    return " ".join(words)


def response_tokens(tokenizer, records: list[dict]) -> int:
    return sum(len(tokenizer(r["response"], add_special_tokens=False)["input_ids"])
               for r in records)


def measure_run(args, backend: str, method: str, tokenizer, work_dir: Path,
                sampled: bool = False) -> dict:
    """One whole run: its process time, the sidecar's decode time and the tokens written."""
    out_dir = work_dir / f"{backend}_{method}{'_sampled' if sampled else ''}"
    command = run_command(args, backend, method, out_dir, sampled)
    row = {"backend": backend, "method": method, "sampled": sampled, "command": shown(command)}
    if backend == "vllm" and not vllm_installed():
        return {**row, "status": NOT_INSTALLED}
    name = f"{backend} {'sampled ' if sampled else ''}{method}"
    say(f"runs: {name} ...")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=str(ROOT),
                          env=dict(os.environ))
    process_seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {**row, "status": f"failed (exit {done.returncode}): {tail[0]}"}
    meta_path = next(out_dir.rglob(f"{method}.meta.json"))
    meta = json.loads(meta_path.read_text())
    records = json.loads(meta_path.with_name(f"{method}.json").read_text())
    decode = meta["decode_seconds"]
    tokens = response_tokens(tokenizer, records)
    say(f"runs: {name}: {tokens} tokens in {decode:.2f}s of decoding")
    return {**row, "status": "measured", "questions": len(records),
            "process_seconds": round(process_seconds, 3), "decode_seconds": decode,
            "startup_seconds": round(process_seconds - decode, 3),
            "response_tokens": tokens, "generated_tokens": meta["generated_tokens"],
            "tokens_per_second": tokens / decode if decode else None,
            "generated_tokens_per_second": meta["generated_tokens"] / decode if decode else None,
            "torch_threads": meta["environment"].get("torch_threads")}


def runs_part(args, tokenizer) -> dict:
    """Every run of RUN_CASES, each in its own process, one after the other."""
    with tempfile.TemporaryDirectory(prefix="efficiency_runs_") as tmp:
        rows = [measure_run(args, backend, method, tokenizer, Path(tmp), sampled)
                for backend, method, sampled in RUN_CASES if backend in args.run_backends]
    threads = args.threads or "torch's default"
    if not args.threads and os.environ.get("OMP_NUM_THREADS"):
        threads = f"torch's default under OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    return {"questions": args.dataset_questions, "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens, "threads": threads, "rows": rows,
            "gpu_command": GPU_COMMAND}


def runs_targets(rows: list[dict], judge: bool) -> list[dict]:
    """The issue's vLLM targets from the runs' tokens/s (pure: rows in, targets out). A target
    whose runs were not measured stays open (holds None) with the reason, and nothing is
    judged when `judge` is false."""
    by_key = {row_key(r): r for r in rows}
    out = []
    for name, num, den, factor in RUN_TARGETS:
        a, b = (by_key.get(k, {}).get("tokens_per_second") for k in (num, den))
        measured = a / b if a is not None and b else None
        holds = measured >= factor if judge and measured is not None else None
        target = {"target": name, "measured": measured, "threshold": f">= {factor}",
                  "holds": holds}
        missing = [by_key[k]["status"] for k in (num, den)
                   if k in by_key and by_key[k]["status"] != "measured"]
        if missing:
            target["note"] = missing[0]
            if judge and missing[0].startswith("failed"):  # a run that fails fails its target
                target["holds"] = False
        out.append(target)
    return out


def runs_only(args) -> dict:
    """The report of `--only runs`: no model is loaded here (only its tokenizer)."""
    from DecodingMethodsModels.models.loading import load_tokenizer, resolve_model
    from evals.bench.efficiency_report import (
        load_average,
        platform_facts,
        runs_table,
        targets_table,
    )

    started = load_average()
    tokenizer = load_tokenizer(resolve_model(args.model_name))
    runs = runs_part(args, tokenizer)
    report = {"settings": {k: v for k, v in vars(args).items()
                           if k not in ("probe", "probe_model", "skip")},
              "environment": platform_facts(), "load_average": {"start": started,
                                                                "end": load_average()},
              "runs": runs, "targets": runs_targets(runs["rows"], judge=not args.quick),
              "targets_judged": not args.quick}
    env = report["environment"]
    lines = [f"Machine: {env['cpu']}, {env['logical_cpus']} logical CPUs. Model: "
             f"{args.model_name}. Load average at start / end: {started} / "
             f"{report['load_average']['end']}.", ""]
    report["markdown"] = "\n".join(lines + runs_table(report) + [""]
                                   + targets_table(report)) + "\n"
    return report
