"""How the efficiency benchmark times: warm-up, interleaved repeats and their summary; the
Amulet solvers on a fixed shape; the combination step alone on the model's device; the
batch-size sweep."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from evals.bench.efficiency_cases import (
    SOLVERS,
    Case,
    Workload,
    build_workload,
    cost_cases,
    questions_of,
    run_case,
    say,
)

if TYPE_CHECKING:
    import torch

EMPTY_TIMING = dict.fromkeys(
    ("generated_tokens", "tokens_same_every_repeat", "wall_seconds", "wall_seconds_median",
     "cpu_seconds_median", "seconds_per_token", "tokens_per_second"))


def no_wait() -> None:
    """Nothing to wait for: decoding ends in .tolist(), which waits for queued CUDA work."""


def device_synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A function that returns once all work queued on `device` is done: CUDA runs kernels
    asynchronously, so a clock read without it measures only the launch."""
    import torch

    if torch.device(device).type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return no_wait


def timed(fn: Callable, synchronize: Callable[[], None] = no_wait) -> tuple[object, float, float]:
    """Result, wall seconds, process CPU seconds; `synchronize` runs before each clock read."""
    synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    synchronize()
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


def solver_cost(args, model, work: Workload) -> dict[str, dict]:
    """Seconds per step of each Amulet setting on a fixed shape (EOS ignored). The work is the
    same every run, so noise only adds time: the fastest run is the estimate."""
    cases = cost_cases(args)
    timings = time_cases(cases, args, model, work, args.cost_repeats, "cost")
    cost = {}
    for case in cases:
        t = timings[case.key]
        fastest = min(t["wall_seconds"])
        cost[case.key] = {"iteration_num": case.iteration_num, "solver": case.solver,
                          "wall_seconds": t["wall_seconds"],
                          "wall_seconds_median": t["wall_seconds_median"],
                          "seconds_per_step": fastest / args.max_new_tokens,
                          "seconds_per_step_median": t["wall_seconds_median"]
                          / args.max_new_tokens}
    return cost


def combine_step_cost(args, model, work: Workload, repeats: int = 20,
                      synchronizer: Callable[[torch.device], Callable[[], None]]
                      = device_synchronizer) -> list[dict]:
    """Each Amulet rule of the fixed-shape cost on random (B, V) fp32 log-probs: how much of
    a step the combination itself takes, apart from the model forward. The log-probs are made
    on the model's input device, where the engine's are (it writes each chosen token into
    tensors there), and each call is timed with that device synchronised before the clock is
    read."""
    import torch

    from DecodingMethodsModels.engines.core import model_input_device
    from DecodingMethodsModels.rules.combine import amulet_rule

    device = model_input_device(model)
    synchronize = synchronizer(device)
    rows = min(args.batch_size, len(work.pref_ids))
    vocab = model.get_output_embeddings().weight.shape[0]  # the width of the logits
    generator = torch.Generator(device=device).manual_seed(0)
    pref = torch.log_softmax(torch.randn(rows, vocab, generator=generator, device=device),
                             dim=-1)  # (B, V)
    base = torch.log_softmax(torch.randn(rows, vocab, generator=generator, device=device),
                             dim=-1)  # (B, V)
    out = []
    for solver in SOLVERS:
        for t in args.cost_T:
            rule = amulet_rule(t, args.alpha, args.player_lambda, args.eta, solver)
            rule(pref, base)  # warm-up
            best = min(timed(lambda r=rule: r(pref, base), synchronize)[1]
                       for _ in range(repeats))
            out.append({"iteration_num": t, "solver": solver, "rows": rows, "vocab": vocab,
                        "repeats": repeats, "ms_per_call": best * 1000.0})
    return out


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
