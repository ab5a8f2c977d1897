"""Decode-time cost of every method on one model, one question set and one batch size.

In one process, after a warm-up, with repeats interleaved across methods (the median is
reported), it times base, pref, beam, la and amulet (each T of --amulet_T, both solvers) and
transformers' classifier-free guidance (`generate(guidance_scale=1 + k,
negative_prompt_ids=...)`), the alternative a user would pick today. It then times the Amulet
solvers on a fixed shape (no EOS: every row decodes every step, so all T do the same work)
and the combination step alone on random log-probs, measures each method's peak memory in
a fresh process, and sweeps the batch size for pref and amulet. It prints markdown tables
and writes JSON (--out) and markdown beside it.

    python evals/efficiency.py --eval_data UltraFeedback_truthful_qa \
        --limit 8 --batch_size 8 --max_new_tokens 128

Greedy decoding throughout. Tokens are generated tokens per question, the ending EOS
included and padding excluded; tokens/s is their sum over wall-clock seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from DecodingMethodsModels.errors import UserError  # noqa: E402
from DecodingMethodsModels.provenance import git_dirty, software_facts  # noqa: E402
from evals.errors import EvalError, EvalFailure, exit_code  # noqa: E402

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
SOLVERS = ("closed_form", "iterative")
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


@dataclass(frozen=True)
class Case:
    """One timed configuration: a registry method, or transformers' CFG ('hf_cfg')."""

    method: str
    iteration_num: int | None = None
    solver: str | None = None
    cfg_mode: str | None = None  # 'batched' or 'per_prompt'
    fixed_length: bool = False  # ignore EOS: every row decodes max_new_tokens steps

    @property
    def key(self) -> str:
        parts = [self.method]
        if self.iteration_num is not None:
            parts += [f"T={self.iteration_num}", self.solver]
        if self.cfg_mode:
            parts.append(self.cfg_mode)
        if self.fixed_length:
            parts.append("fixed")
        return ":".join(parts)

    @property
    def setting(self) -> str:
        if self.method == "amulet":
            return f"T={self.iteration_num}, {self.solver}"
        if self.method == "hf_cfg":
            return f"guidance_scale=1+k, {self.cfg_mode}"
        return ""

    @classmethod
    def from_key(cls, key: str) -> Case:
        parts = key.split(":")
        fixed = parts[-1] == "fixed"
        parts = parts[:-1] if fixed else parts
        if parts[0] == "amulet":
            return cls("amulet", int(parts[1].removeprefix("T=")), parts[2], fixed_length=fixed)
        if parts[0] == "hf_cfg":
            return cls("hf_cfg", cfg_mode=parts[1], fixed_length=fixed)
        return cls(parts[0], fixed_length=fixed)


@dataclass
class Workload:
    """Encoded prompts cut into the batches the runner would decode (sorted by length)."""

    pref_ids: list[list[int]]
    base_ids: list[list[int]]
    batches: list[list[int]]
    eos_ids: list[int]
    pad_id: int
    settings: object = field(repr=False)  # DecodeSettings


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
                     "methods (their timing), memory, cost, sweep, beam, cfg")
    how.add_argument("--quick", action="store_true",
                     help="smoke run: 2 questions, 4 tokens, 1 repeat, T 0 and 2, sweep 1 and 2")

    hw = parser.add_argument_group("hardware")
    hw.add_argument("--device", default="auto")
    hw.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    hw.add_argument("--num_threads", "--threads", dest="threads", type=int, default=None,
                    help="torch threads (default: torch's)")
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
    for name in ("limit", "batch_size", "max_new_tokens", "num_beams", "repeats",
                 "cost_repeats", "sweep_repeats"):
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
    args.skip = {s for s in args.skip.split(",") if s}
    unknown = args.skip - {"methods", "memory", "cost", "sweep", "beam", "cfg"}
    if unknown:
        raise EvalError(f"unknown --skip part(s) {sorted(unknown)}; use methods, memory, cost, "
                        "sweep, beam, cfg")
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


def method_cases(args) -> list[Case]:
    cases = [Case("base"), Case("pref")]
    if "beam" not in args.skip:
        cases.append(Case("beam"))
    cases.append(Case("la"))
    cases += [Case("amulet", t, s) for s in SOLVERS for t in args.amulet_T]
    reference = Case("amulet", args.iteration_num, "closed_form")
    if reference not in cases:
        cases.append(reference)
    if "cfg" not in args.skip:
        cases += [Case("hf_cfg", cfg_mode=m) for m in args.cfg_modes]
    return cases


def cost_cases(args) -> list[Case]:
    return [Case("amulet", t, s, fixed_length=True) for s in SOLVERS for t in args.cost_T]


# ---------------------------------------------------------------- loading and workloads


def load(args):
    """Tokenizer, model and a short description of both; the model stays in eval mode."""
    import torch

    from DecodingMethodsModels.loading import (
        check_fetchable,
        load_model,
        load_tokenizer,
        resolve_device,
        resolve_model,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    source = resolve_model(args.probe_model or args.model_name)
    check_fetchable(source)
    device = resolve_device(args.device)
    tokenizer = load_tokenizer(source)
    model = load_model(source, device, args.dtype)
    return tokenizer, model, source, device


def build_workload(args, tokenizer, model, questions) -> Workload:
    from DecodingMethodsModels.loading import eos_token_ids, pad_token_id
    from DecodingMethodsModels.methods import DecodeSettings
    from DecodingMethodsModels.prompts import (
        encode_prompt,
        preference_sentence,
        template_accepts_system,
    )
    from DecodingMethodsModels.runner import batches_of

    system_role = template_accepts_system(tokenizer)
    preference = preference_sentence(args.pref_name)
    pref_ids = [encode_prompt(tokenizer, q.question, preference, system_role) for q in questions]
    base_ids = [encode_prompt(tokenizer, q.question, "", system_role) for q in questions]
    context = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(p) for p in pref_ids + base_ids)
    if context and longest + args.max_new_tokens > context:
        raise EvalError(f"a prompt of {longest} tokens + {args.max_new_tokens} new tokens exceeds "
                        f"the model's context {context}; lower --max_new_tokens or --limit")
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = pad_token_id(tokenizer, eos_ids)
    settings = DecodeSettings(
        max_new_tokens=args.max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
        num_beams=args.num_beams, reinforce_ratio=args.reinforce_ratio,
        iteration_num=args.iteration_num, alpha=args.alpha, player_lambda=args.player_lambda,
        eta=args.eta,
    )
    batches = batches_of(tuple(questions), [len(p) for p in pref_ids], args.batch_size)
    return Workload(pref_ids, base_ids, batches, eos_ids, pad_id, settings)


def questions_of(args, limit: int):
    from DecodingMethodsModels.eval_data import load_dataset

    return load_dataset(Path(args.data_dir), args.eval_data, limit).questions


# ---------------------------------------------------------------- running one case


def case_runner(case: Case, args, model) -> Callable:
    """A function (pref_ids, base_ids, settings) -> generated ids per question."""
    from DecodingMethodsModels.combine import amulet_ratio
    from DecodingMethodsModels.methods import METHOD_RUNNERS

    if case.method == "hf_cfg":
        scale = 1.0 + amulet_ratio(args.iteration_num, args.alpha, args.player_lambda, args.eta)
        if case.cfg_mode == "per_prompt":
            def per_prompt(pref, base, settings):
                pairs = zip(pref, base, strict=True)
                return [hf_cfg(model, [p], [b], settings, scale)[0] for p, b in pairs]
            return per_prompt
        return lambda pref, base, settings: hf_cfg(model, pref, base, settings, scale)
    runner = METHOD_RUNNERS[case.method]
    if case.method == "amulet":
        def amulet(pref, base, settings):
            settings = replace(settings, iteration_num=case.iteration_num,
                               amulet_solver=case.solver)
            return runner(model, pref, base, settings, 0)
        return amulet
    return lambda pref, base, settings: runner(model, pref, base, settings, 0)


def hf_cfg(model, pref_ids, base_ids, settings, scale: float) -> list[list[int]]:
    """transformers' classifier-free guidance, greedy, negative prompt = the base prompt.

    transformers runs the negative prompt as a second forward per step with its own cache;
    `negative_prompt_ids` must have batch 1 or the batch of the inputs, with its own mask.
    """
    import torch
    from transformers import GenerationConfig

    from DecodingMethodsModels.engine import left_pad, model_input_device
    from DecodingMethodsModels.methods import cut_at_eos

    device = model_input_device(model)
    ids, mask = left_pad(pref_ids, settings.pad_id)
    negative, negative_mask = left_pad(base_ids, settings.pad_id)
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens, do_sample=False, num_beams=1,
        guidance_scale=scale, eos_token_id=settings.eos_ids, pad_token_id=settings.pad_id,
    )
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device),
            negative_prompt_ids=negative.to(device),
            negative_prompt_attention_mask=negative_mask.to(device), generation_config=config,
        )
    return [cut_at_eos(row.tolist(), settings.eos_ids) for row in out[:, ids.shape[1]:]]


def run_case(case: Case, args, model, work: Workload, max_new_tokens: int | None = None,
             batches: list[list[int]] | None = None) -> list[list[int]]:
    """Decode every batch of `work`; returns generated ids per question, in question order."""
    settings = work.settings
    if max_new_tokens is not None:
        settings = replace(settings, max_new_tokens=max_new_tokens)
    if case.fixed_length:
        settings = replace(settings, eos_ids=[-1])  # no token id is negative: never stops
    decode = case_runner(case, args, model)
    outputs: dict[int, list[int]] = {}
    for rows in batches or work.batches:
        got = decode([work.pref_ids[i] for i in rows], [work.base_ids[i] for i in rows], settings)
        outputs.update(zip(rows, got, strict=True))
    return [outputs[i] for i in sorted(outputs)]


def timed(fn: Callable) -> tuple[object, float, float]:
    """Result, wall seconds, process CPU seconds (CUDA work is synchronised by .tolist())."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def time_cases(cases: list[Case], args, model, work: Workload, repeats: int,
               label: str) -> dict[str, dict]:
    """Warm each case up, then `repeats` rounds, each running every case once in a rotated
    order, so slow drifts of the machine spread over all cases instead of hitting one."""
    for case in cases:
        run_case(case, args, model, work, max_new_tokens=min(8, args.max_new_tokens),
                 batches=work.batches[:1])
    samples = {c.key: {"wall": [], "cpu": [], "tokens": []} for c in cases}
    outputs = {}
    for r in range(repeats):
        shift = r % len(cases)
        for case in cases[shift:] + cases[:shift]:
            out, wall, cpu = timed(lambda c=case: run_case(c, args, model, work))
            entry = samples[case.key]
            entry["wall"].append(wall)
            entry["cpu"].append(cpu)
            entry["tokens"].append(sum(len(ids) for ids in out))
            outputs.setdefault(case.key, out)
            say(f"{label} {r + 1}/{repeats} {case.key}: {entry['tokens'][-1]} tokens "
                f"in {wall:.2f}s")
    return {key: summarise(s) | {"outputs": outputs[key]} for key, s in samples.items()}


EMPTY_TIMING = dict.fromkeys(
    ("generated_tokens", "tokens_same_every_repeat", "wall_seconds", "wall_seconds_median",
     "cpu_seconds_median", "seconds_per_token", "tokens_per_second"))


def summarise(samples: dict) -> dict:
    wall = statistics.median(samples["wall"])
    tokens = samples["tokens"][0]
    return {
        "generated_tokens": tokens,
        "tokens_same_every_repeat": len(set(samples["tokens"])) == 1,
        "wall_seconds": [round(s, 4) for s in samples["wall"]],
        "wall_seconds_median": round(wall, 4),
        "cpu_seconds_median": round(statistics.median(samples["cpu"]), 4),
        "seconds_per_token": wall / tokens if tokens else None,
        "tokens_per_second": tokens / wall if wall else None,
    }


def combine_step_cost(args, model, work: Workload, repeats: int = 20) -> list[dict]:
    """Each Amulet rule of the fixed-shape cost on random (B, V) fp32 log-probs: how much of
    a step the combination itself takes, apart from the model forward."""
    import torch

    from DecodingMethodsModels.combine import amulet_rule

    rows = min(args.batch_size, len(work.pref_ids))
    vocab = model.get_output_embeddings().weight.shape[0]  # the width of the logits
    generator = torch.Generator().manual_seed(0)
    pref = torch.log_softmax(torch.randn(rows, vocab, generator=generator), dim=-1)
    base = torch.log_softmax(torch.randn(rows, vocab, generator=generator), dim=-1)
    out = []
    for solver in SOLVERS:
        for t in args.cost_T:
            rule = amulet_rule(t, args.alpha, args.player_lambda, args.eta, solver)
            rule(pref, base)  # warm-up
            best = min(timed(lambda r=rule: r(pref, base))[1] for _ in range(repeats))
            out.append({"iteration_num": t, "solver": solver, "rows": rows, "vocab": vocab,
                        "repeats": repeats, "ms_per_call": best * 1000.0})
    return out


# ---------------------------------------------------------------- memory


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

    from DecodingMethodsModels.loading import load_tokenizer, resolve_model

    directory = Path(tempfile.mkdtemp(prefix="efficiency_model_"))
    model.save_pretrained(directory)
    load_tokenizer(resolve_model(args.model_name)).save_pretrained(directory)
    return directory


def rss_child(case: Case, args, model_path: str, live: bool) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), *forwarded_flags(args),
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


# ---------------------------------------------------------------- batch sweep


def batch_sweep(args, tokenizer, model) -> list[dict]:
    """pref and amulet (T = --iteration_num, closed form) on the same questions at each batch
    size; each decodes all of them in length-sorted batches of that size."""
    questions = questions_of(args, args.sweep_questions)
    rows = []
    cases = [Case("pref"), Case("amulet", args.iteration_num, "closed_form")]
    for size in args.sweep_batch_sizes:
        sized = argparse.Namespace(**{**vars(args), "batch_size": size})
        work = build_workload(sized, tokenizer, model, questions)
        timings = time_cases(cases, sized, model, work, args.sweep_repeats, f"sweep b={size}")
        for case in cases:
            t = timings[case.key]
            rows.append({"method": case.method, "setting": case.setting, "batch_size": size,
                         "questions": len(questions), "generated_tokens": t["generated_tokens"],
                         "wall_seconds_median": t["wall_seconds_median"],
                         "tokens_per_second": t["tokens_per_second"]})
    return rows


# ---------------------------------------------------------------- report


def environment(args, model, source, device: str) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    facts = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "device": device,
        "model": args.model_name,
        "model_file": source.gguf_file,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        **software_facts(),
        "git_uncommitted_changes": git_dirty(),
    }
    if device.startswith("cuda"):
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def check_targets(args, results: dict, cost: dict, memory: dict) -> list[dict]:
    """The issue's targets, each with its measured value; None where a part was skipped."""
    amulet = f"amulet:T={args.iteration_num}:closed_form"
    tps = {k: v["tokens_per_second"] for k, v in results.items()}
    per_step = {k: v["seconds_per_step"] for k, v in cost.items()}
    mem = {k: v["peak_above_loaded_mb"] for k, v in memory.items()}
    total = {k: v["peak_rss_mb"] for k, v in memory.items()}

    def fixed(t: int, solver: str) -> str:
        return f"amulet:T={t}:{solver}:fixed"

    t_low, t_high = (min(args.cost_T), max(args.cost_T)) if args.cost_T else (0, 0)
    cost_change = ratio(per_step.get(fixed(t_high, "closed_form")),
                        per_step.get(fixed(t_low, "closed_form")))
    iterative = ratio(per_step.get(fixed(args.iteration_num, "iterative")),
                      per_step.get(fixed(args.iteration_num, "closed_form")))
    rows = [
        ("amulet tokens/s / pref tokens/s", ratio(tps.get(amulet), tps.get("pref")), ">=", 0.5),
        ("amulet tokens/s / HF CFG (batched) tokens/s",
         ratio(tps.get(amulet), tps.get("hf_cfg:batched")), ">=", 1.2),
        ("amulet tokens/s / HF CFG (per prompt) tokens/s",
         ratio(tps.get(amulet), tps.get("hf_cfg:per_prompt")), ">=", 1.2),
        (f"closed form s/step, T={t_high} / T={t_low} (fixed shape)", cost_change, "<=", 1.05),
        (f"iterative / closed form s/step at T={args.iteration_num} (fixed shape)", iterative,
         "<=", 1.25),
        ("amulet / pref peak memory above the loaded model", ratio(mem.get(amulet),
                                                                  mem.get("pref")), "<=", 1.5),
        ("amulet / pref peak process memory", ratio(total.get(amulet), total.get("pref")),
         "<=", 1.5),
    ]
    out = []
    for name, value, op, threshold in rows:
        holds = None if value is None else (value >= threshold if op == ">=" else
                                            value <= threshold)
        out.append({"target": name, "measured": value, "threshold": f"{op} {threshold}",
                    "holds": holds})
    return out


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict) -> str:
    env, s = report["environment"], report["settings"]
    lines = [
        f"Machine: {env['cpu']}, {env['logical_cpus']} logical CPUs, {env['torch_threads']} "
        f"torch threads, {env['device']}. Model: {env['model']} ({env['dtype']}). "
        f"python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"commit {str(env['git_commit'])[:10]}"
        f"{' + uncommitted changes' if env.get('git_uncommitted_changes') else ''}.",
        f"Workload: {s['questions']} questions of {s['eval_data']}, preference "
        f"{s['pref_name']}, batch size {s['batch_size']}, max_new_tokens "
        f"{s['max_new_tokens']}, greedy. Load average at start / end: "
        f"{report['load_average']['start']} / {report['load_average']['end']}.",
        "",
    ]
    if report["methods"]:
        n = s["repeats"]
        lines += [
            f"Tokens: generated per question, EOS included. Wall: median of {n} interleaved "
            f"run(s) after a warm-up. Memory: {report['memory_method']}.",
            "",
            "| method | setting | tokens | wall s | s / token | tokens / s | vs pref | "
            "CPU s / token | peak MB above loaded | peak MB |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        pref = report["methods"].get("pref", {}).get("tokens_per_second")
        for row in report["methods"].values():
            mem = row.get("memory") or {}
            lines.append(
                f"| {row['method']} | {row['setting']} | {fmt(row['generated_tokens'])} | "
                f"{fmt(row['wall_seconds_median'])} | {fmt(row['seconds_per_token'], 4)} | "
                f"{fmt(row['tokens_per_second'], 1)} | "
                f"{fmt(ratio(row['tokens_per_second'], pref))} | "
                f"{fmt(ratio(row['cpu_seconds_median'], row['generated_tokens']), 4)} | "
                f"{fmt(mem.get('peak_above_loaded_mb'), 0)} | {fmt(mem.get('peak_rss_mb'), 0)} |"
            )
        lines.append("")
    if report["solver_cost"]:
        base_key = next(iter(report["solver_cost"]))
        base_step = report["solver_cost"][base_key]["seconds_per_step"]
        lines += [
            f"Amulet solver cost on a fixed shape: EOS ignored, all {s['batch_size']} questions "
            f"decode {s['max_new_tokens']} steps; {s['cost_repeats']} interleaved run(s) each. "
            "The work is identical from run to run, so noise only adds time: the fastest run "
            "is the estimate, the median is shown beside it.",
            "",
            f"| T | solver | s / step, fastest | s / step, median | fastest vs "
            f"{base_key.split(':fixed')[0]} |",
            "|---:|---|---:|---:|---:|",
        ]
        for row in report["solver_cost"].values():
            lines.append(f"| {row['iteration_num']} | {row['solver']} | "
                         f"{fmt(row['seconds_per_step'], 4)} | "
                         f"{fmt(row['seconds_per_step_median'], 4)} | "
                         f"{fmt(ratio(row['seconds_per_step'], base_step), 3)} |")
        lines.append("")
    if report["combine_step"]:
        first = report["combine_step"][0]
        lines += [
            f"The combination step alone (no model): fp32 log-probs of shape "
            f"({first['rows']}, {first['vocab']}), fastest of {first['repeats']} calls.",
            "",
            "| T | solver | ms / call |",
            "|---:|---|---:|",
        ]
        for row in report["combine_step"]:
            lines.append(f"| {row['iteration_num']} | {row['solver']} | "
                         f"{fmt(row['ms_per_call'], 2)} |")
        lines.append("")
    if report["batch_sweep"]:
        lines += [
            f"Tokens/s against batch size: the same {report['batch_sweep'][0]['questions']} "
            f"questions at every size, median of {s['sweep_repeats']} run(s).",
            "",
            "| batch size | pref tokens / s | amulet tokens / s | amulet / pref |",
            "|---:|---:|---:|---:|",
        ]
        by_size: dict[int, dict] = {}
        for row in report["batch_sweep"]:
            by_size.setdefault(row["batch_size"], {})[row["method"]] = row["tokens_per_second"]
        for size, got in by_size.items():
            lines.append(f"| {size} | {fmt(got.get('pref'), 1)} | {fmt(got.get('amulet'), 1)} | "
                         f"{fmt(ratio(got.get('amulet'), got.get('pref')))} |")
        lines.append("")
    if report["targets"]:
        lines += ["| target | measured | threshold | holds |", "|---|---:|---|---|"]
        for t in report["targets"]:
            holds = {True: "yes", False: "NO", None: "not measured"}[t["holds"]]
            lines.append(f"| {t['target']} | {fmt(t['measured'], 3)} | {t['threshold']} | "
                         f"{holds} |")
        lines.append("")
    for note in report["notes"]:
        lines.append(f"- {note}")
    return "\n".join(lines).rstrip() + "\n"


def agreement(results: dict, a: str, b: str) -> str | None:
    if a not in results or b not in results:
        return None
    same = sum(x == y for x, y in zip(results[a]["outputs"], results[b]["outputs"], strict=True))
    return f"{same}/{len(results[a]['outputs'])}"


def notes_for(args, results: dict) -> list[str]:
    amulet = f"amulet:T={args.iteration_num}:closed_form"
    notes = [
        "base, pref and beam are a single model.generate call each (methods.generate_on): "
        "they are plain transformers generate, so they cannot regress against it.",
        "HF CFG = model.generate(guidance_scale=1+k, negative_prompt_ids=base prompts, "
        f"negative_prompt_attention_mask=...), k = amulet_ratio(T={args.iteration_num}); "
        "transformers runs the negative prompt as a second forward per step; 'batched' passes "
        "the whole batch (negative_prompt_ids with the same batch), 'per_prompt' one prompt "
        "at a time.",
    ]
    for other in ("hf_cfg:batched", "hf_cfg:per_prompt"):
        same = agreement(results, amulet, other)
        if same is not None:
            notes.append(f"identical responses, {amulet} vs {other}: {same}")
    same = agreement(results, amulet, f"amulet:T={args.iteration_num}:iterative")
    if same is not None:
        notes.append(f"identical responses, closed form vs iterative solver: {same}")
    return notes


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args) -> dict:
    import torch

    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    questions = questions_of(args, args.limit)  # validated before any weights load
    started = load_average()
    tokenizer, model, source, device = load(args)
    work = build_workload(args, tokenizer, model, questions)
    methods: dict[str, dict] = {}
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
        for case in cases:
            if case.key in results or case.key in memory:
                row = {k: v for k, v in results.get(case.key, EMPTY_TIMING).items()
                       if k != "outputs"}
                methods[case.key] = {"method": case.method, "setting": case.setting, **row,
                                     "memory": memory.get(case.key)}
        cost: dict[str, dict] = {}
        combine: list[dict] = []
        if "cost" not in args.skip and args.cost_T:
            timings = time_cases(cost_cases(args), args, model, work, args.cost_repeats, "cost")
            for case in cost_cases(args):
                t = timings[case.key]
                fastest = min(t["wall_seconds"])
                cost[case.key] = {"iteration_num": case.iteration_num, "solver": case.solver,
                                  "wall_seconds": t["wall_seconds"],
                                  "wall_seconds_median": t["wall_seconds_median"],
                                  "seconds_per_step": fastest / args.max_new_tokens,
                                  "seconds_per_step_median": t["wall_seconds_median"]
                                  / args.max_new_tokens}
            combine = combine_step_cost(args, model, work)
        sweep = []
        if "sweep" not in args.skip and args.sweep_batch_sizes:
            sweep = batch_sweep(args, tokenizer, model)
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
        "targets": check_targets(args, results, cost, memory),
        "notes": notes_for(args, results),
    }
    text = markdown(report)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    out_path.with_suffix(".md").write_text(text)
    print(text)
    say(f"wrote {out_path} and {out_path.with_suffix('.md')}")
    return report


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.probe:
            return probe_memory(args)
        run(args)
    except (EvalError, UserError) as err:
        print(f"error: {err}", file=sys.stderr)
        return exit_code(err) if isinstance(err, EvalError) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
