"""Decode-time cost of every method on one model, one question set and one batch size.

In one process, after a warm-up, with repeats interleaved across methods (the median is
reported), it times base, pref, beam, la and amulet (each T of --amulet_T, both solvers) and
transformers' classifier-free guidance (`generate(guidance_scale=1 + k,
negative_prompt_ids=...)`), the alternative a user would pick today. It then times the Amulet
solvers on a fixed shape (no EOS: every row decodes every step, so all T do the same work)
and the combination step alone on random log-probs, measures each method's peak memory in
a fresh process, and sweeps the batch size for pref and amulet. It prints markdown tables
and writes JSON (--out) and markdown beside it. A full run exits 1 when a target fails;
--quick is a smoke run that reports the targets' values without judging them.

    python evals/efficiency.py --eval_data UltraFeedback_truthful_qa \
        --limit 8 --batch_size 8 --max_new_tokens 128

The dataset part times pref (model.generate in fixed length-sorted batches) against amulet
through the engine with continuous batching and with fixed batches, over a whole question set
(--dataset_questions), as the runner decodes it. Alone, on a quiet machine (the issue's
target: amulet / pref tokens/s >= 0.65):

    OMP_NUM_THREADS=2 python evals/efficiency.py --only dataset --num_threads 2 \
        --eval_data UltraFeedback_truthful_qa --dataset_questions 64 --batch_size 8 \
        --max_new_tokens 128 --out benchmarks/efficiency_dataset.json

The runs part (efficiency_runs) times whole `main.py` processes, hf and vLLM, pref and amulet
(and on vLLM also sampled pref and amulet: top-p 0.95, temperature 0.7),
on the same --dataset_questions questions, as a user runs them (start-up left out through the
sidecar's decode seconds, tokens counted from the written responses), and judges the vLLM
targets; vLLM rows read "not measured: vLLM not installed" without vLLM:

    python evals/efficiency.py --only runs --eval_data UltraFeedback_truthful_qa \
        --dataset_questions 64 --batch_size 8 --max_new_tokens 128 \
        --out benchmarks/efficiency_runs.json

Greedy decoding throughout, but for those sampled runs. Tokens are generated tokens per
question, the ending EOS included and padding excluded; tokens/s is their sum over wall-clock
seconds.

This file is the command line and the run; the parts live beside it: efficiency_cases (what
is measured), efficiency_timing and efficiency_memory (how), efficiency_report (the tables).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from DecodingMethodsModels.errors import UserError
from evals.bench.efficiency_cases import (
    build_workload,
    load,
    method_cases,
    questions_of,
    say,
)
from evals.bench.efficiency_dataset import dataset_target, dataset_throughput
from evals.bench.efficiency_memory import (
    MEMORY_NOTE,
    measure_memory,
    memory_mode,
    probe_memory,
)
from evals.bench.efficiency_report import (
    check_targets,
    environment,
    failed_targets,
    failure_message,
    load_average,
    markdown,
    notes_for,
)
from evals.bench.efficiency_runs import runs_only, runs_part, runs_targets
from evals.bench.efficiency_timing import (
    EMPTY_TIMING,
    batch_sweep,
    combine_step_cost,
    solver_cost,
    time_cases,
)
from evals.errors import EvalError, exit_code
from evals.threads import NUM_THREADS_HELP, THREADS_TYPE

ROOT = Path(__file__).resolve().parents[2]

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
PARTS = ("methods", "memory", "cost", "sweep", "beam", "cfg", "library", "dataset", "runs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evals/efficiency.py",
        description="Time every decoding method and transformers' CFG; write a table and JSON.",
    )
    what = parser.add_argument_group("workload")
    what.add_argument("--model_name", default=DEFAULT_MODEL,
                      help="embedded default, a local model directory, a .gguf file or a hub id")
    what.add_argument("--data_dir", default=os.environ.get("AMULET_DATA_DIR", str(ROOT / "data")))
    what.add_argument("--eval_data", default="demo", help="one dataset name in --data_dir")
    what.add_argument("--limit", type=int, default=8, help="the first N questions")
    what.add_argument("--pref_name", default="creative")
    what.add_argument("--batch_size", type=int, default=8)
    what.add_argument("--max_new_tokens", type=int, default=128)
    what.add_argument("--num_beams", type=int, default=16)
    what.add_argument("--iteration_num", type=int, default=60,
                      help="Amulet's T for the comparisons with pref, CFG and the batch sweep")
    what.add_argument("--amulet_T", default="0,20,60,100", help="comma list of T to time")
    what.add_argument("--cost_T", default="0,60,100",
                      help="comma list of T for the fixed-shape solver cost (both solvers)")
    what.add_argument("--alpha", type=float, default=2.0)
    what.add_argument("--player_lambda", type=float, default=2.0)
    what.add_argument("--eta", type=float, default=10.0)
    what.add_argument("--reinforce_ratio", type=float, default=2.0)

    how = parser.add_argument_group("measurement")
    how.add_argument("--repeats", type=int, default=3, help="timed runs per method (median)")
    how.add_argument("--cost_repeats", type=int, default=5,
                     help="timed runs per Amulet solver setting on the fixed shape (median)")
    how.add_argument("--sweep_batch_sizes", default="1,4,8,16")
    how.add_argument("--sweep_questions", type=int, default=None,
                     help="questions decoded at every swept batch size (default: the largest)")
    how.add_argument("--sweep_repeats", type=int, default=1)
    how.add_argument("--cfg_modes", default="batched,per_prompt",
                     help="how to call transformers' CFG: batched, per_prompt or both")
    how.add_argument("--memory", choices=("auto", "live", "off"), default="auto",
                     help="auto: RSS of a fresh process per method on CPU, allocator stats on "
                     "CUDA; live: the same RSS with large allocations unmapped on free")
    how.add_argument("--skip", default="", help="comma list of parts to skip: "
                     f"{', '.join(PARTS)} (methods: their timing)")
    how.add_argument("--only", default="", help="comma list of the parts to run, the others "
                     "skipped (e.g. --only dataset)")
    how.add_argument("--quick", action="store_true",
                     help="smoke run: 2 questions, 4 tokens, 1 repeat, T 0 and 2, sweep 1 and 2; "
                     "targets are shown but not judged")

    data = parser.add_argument_group("dataset throughput")
    data.add_argument("--dataset_questions", type=int, default=64,
                      help="the first N questions of --eval_data, decoded whole by pref and "
                      "amulet at --batch_size (the dataset part, and the runs part's --limit)")
    data.add_argument("--dataset_repeats", type=int, default=1,
                      help="timed runs per dataset case (median)")
    data.add_argument("--run_backends", default="hf,vllm",
                      help="backends of the runs part (whole main.py runs of pref and amulet)")

    hw = parser.add_argument_group("hardware")
    hw.add_argument("--device", default="auto")
    hw.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    hw.add_argument("--num_threads", "--threads", dest="threads", type=THREADS_TYPE,
                    default=None, metavar="auto|N", help=NUM_THREADS_HELP)
    hw.add_argument("--out", default=None, help="JSON report; markdown beside it (default: "
                    "benchmarks/efficiency.json, or efficiency_quick.json with --quick)")
    hw.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # internal: memory child
    hw.add_argument("--probe_model", default=None, help=argparse.SUPPRESS)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.out is None:  # a smoke run never overwrites a full run's report
        args.out = f"benchmarks/efficiency{'_quick' if args.quick else ''}.json"
    if args.quick:
        args.limit, args.batch_size, args.max_new_tokens = 2, 2, 4
        args.repeats = args.cost_repeats = args.sweep_repeats = 1
        args.num_beams, args.amulet_T, args.cost_T, args.iteration_num = 2, "0,2", "0,2", 2
        args.sweep_batch_sizes, args.sweep_questions = "1,2", 2
        args.dataset_questions, args.dataset_repeats = 3, 1  # 3 questions: one admission
    for name in ("limit", "batch_size", "max_new_tokens", "num_beams", "repeats",
                 "cost_repeats", "sweep_repeats", "dataset_questions", "dataset_repeats"):
        if getattr(args, name) < 1:
            raise EvalError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        raise EvalError(f"--num_threads must be >= 1, got {args.threads}")
    args.amulet_T = int_list("--amulet_T", args.amulet_T, low=0)
    args.cost_T = int_list("--cost_T", args.cost_T, low=0)
    args.sweep_batch_sizes = int_list("--sweep_batch_sizes", args.sweep_batch_sizes, low=1)
    args.cfg_modes = [m for m in args.cfg_modes.split(",") if m]
    for mode in args.cfg_modes:
        if mode not in ("batched", "per_prompt"):
            raise EvalError(f"unknown --cfg_modes entry {mode!r}; use batched and/or per_prompt")
    args.run_backends = [b for b in args.run_backends.split(",") if b]
    if not args.run_backends or set(args.run_backends) - {"hf", "vllm"}:
        raise EvalError(f"--run_backends must be a comma list of hf and vllm, got "
                        f"{','.join(args.run_backends)!r}")
    args.skip = {s for s in args.skip.split(",") if s}
    only = {s for s in args.only.split(",") if s}
    for flag, parts in (("--skip", args.skip), ("--only", only)):
        unknown = parts - set(PARTS)
        if unknown:
            raise EvalError(f"unknown {flag} part(s) {sorted(unknown)}; use {', '.join(PARTS)}")
    if only:
        args.skip |= set(PARTS) - only
    elif args.quick:  # whole main.py processes: only when asked for (--only runs)
        args.skip.add("runs")
    if args.sweep_questions is None and args.sweep_batch_sizes:
        args.sweep_questions = max(args.sweep_batch_sizes)
    return args


def int_list(flag: str, text: str, low: int) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EvalError(f"{flag} must be a comma list of integers, got {text!r}") from None
    if any(v < low for v in values):
        raise EvalError(f"{flag} entries must be >= {low}, got {text!r}")
    return list(dict.fromkeys(values))


def method_rows(cases, results: dict, memory: dict) -> dict[str, dict]:
    """One row per case timed or measured: its timing (outputs left out) and peak memory."""
    methods: dict[str, dict] = {}
    for case in cases:
        if case.key in results or case.key in memory:
            row = {k: v for k, v in results.get(case.key, EMPTY_TIMING).items()
                   if k != "outputs"}
            methods[case.key] = {"method": case.method, "setting": case.setting, **row,
                                 "memory": memory.get(case.key)}
    return methods


def other_parts(args, tokenizer, model, source, work) -> tuple:
    """The parts beside the methods' timing, each unless --skip names it: solver cost and
    combination step, batch sweep, the library's paths, dataset throughput."""
    cost: dict[str, dict] = {}
    combine: list[dict] = []
    if "cost" not in args.skip and args.cost_T:
        cost = solver_cost(args, model, work)
        combine = combine_step_cost(args, model, work)
    sweep = []
    if "sweep" not in args.skip and args.sweep_batch_sizes:
        sweep = batch_sweep(args, tokenizer, model)
    library = []
    if "library" not in args.skip:  # the library's paths, ARGS and PAD processors included
        from evals.bench.library_bench import efficiency_part

        library = efficiency_part(args, model, source, work)
    dataset = {}
    if "dataset" not in args.skip:
        dataset = dataset_throughput(args, tokenizer, model)
    return cost, combine, sweep, library, dataset


def write(report: dict, text: str, out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)  # made only once there is a report
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    out_path.with_suffix(".md").write_text(text)
    print(text)
    say(f"wrote {out_path} and {out_path.with_suffix('.md')}")


def check_out_folder(folder: Path) -> None:
    """The report's folder exists and is writable, or can be made: its nearest existing
    ancestor is a writable folder. Nothing is created here (a run that fails early leaves
    nothing behind)."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise EvalError(f"cannot write the report into {folder}/: {existing} is not a "
                        "writable folder (choose another --out)")


def run(args) -> dict:
    import torch

    out_path = Path(args.out)
    check_out_folder(out_path.parent)
    questions = questions_of(args, args.limit)  # validated before any weights load
    if set(PARTS) - args.skip == {"runs"}:  # whole runs alone: no model loaded here
        questions_of(args, args.dataset_questions)
        report = runs_only(args)
        write(report, report.pop("markdown"), out_path)
        return report
    started = load_average()
    tokenizer, model, source, device = load(args)
    work = build_workload(args, tokenizer, model, questions)
    results: dict[str, dict] = {}
    memory: dict[str, dict] = {}
    mode = memory_mode(args, device)
    with torch.inference_mode():
        cases = method_cases(args)
        if "methods" not in args.skip:
            results = time_cases(cases, args, model, work, args.repeats, "run")
        probe = [c for c in cases if not args.quick or c.key in
                 ("pref", f"amulet:T={args.iteration_num}:closed_form")]
        memory = measure_memory(probe, args, model, source, work, mode)
        methods = method_rows(cases, results, memory)
        cost, combine, sweep, library, dataset = other_parts(args, tokenizer, model, source, work)
    runs = runs_part(args, tokenizer) if "runs" not in args.skip else {}
    settings = {k: v for k, v in vars(args).items() if k not in ("probe", "probe_model")}
    settings["skip"] = sorted(args.skip)
    settings["questions"] = len(questions)
    report = {
        "settings": settings,
        "environment": environment(args, model, source, device),
        "load_average": {"start": started, "end": load_average()},
        "memory_method": MEMORY_NOTE[mode if memory else "off"],
        "methods": methods,
        "solver_cost": cost,
        "combine_step": combine,
        "batch_sweep": sweep,
        "library": library,
        "dataset": dataset,
        "runs": runs,
        "targets": check_targets(args, results, cost, memory, judge=not args.quick)
        + ([dataset_target(dataset, judge=not args.quick)] if dataset else [])
        + (runs_targets(runs["rows"], judge=not args.quick) if runs else []),
        "targets_judged": not args.quick,
        "notes": notes_for(args, results),
    }
    write(report, markdown(report), out_path)
    return report


def main(argv: list[str] | None = None) -> int:
    """0 when every judged target holds, 1 when one fails (after writing the report), 2 on a
    user error."""
    try:
        args = parse_args(argv)
        if args.probe:
            return probe_memory(args)
        report = run(args)
    except (EvalError, UserError) as err:
        print(f"error: {err}", file=sys.stderr)
        return exit_code(err) if isinstance(err, EvalError) else 2
    failed = failed_targets(report["targets"])
    if failed:
        print(failure_message(failed, len(report["targets"])), file=sys.stderr)
        return 1
    return 0

