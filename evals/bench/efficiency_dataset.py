"""The dataset part of the efficiency benchmark: throughput and wall time over a whole question
set, decoded the way the runner (main.py) decodes it.

- pref: `model.generate` batch by batch, the questions sorted by prompt length and cut into
  fixed batches of --batch_size.
- amulet, continuous: the two-prompt engine over the same length-sorted questions as one
  stream, a question admitted as soon as a slot of --batch_size frees (the runner's default
  for greedy la and amulet).
- amulet, fixed batches: the engine batch by batch (the runner's --no_continuous_batching).

pref does not go through the engine: the engine always decodes two prompts per question, so it
has no single-prompt path that could beat `model.generate`.
"""

from __future__ import annotations

from evals.bench.efficiency_cases import Case, build_workload, questions_of
from evals.bench.efficiency_timing import time_cases

TARGET = "amulet / pref tokens/s over the dataset"
THRESHOLD = 0.65


def dataset_cases(args) -> list[Case]:
    amulet = ("amulet", args.iteration_num, "closed_form")
    return [Case("pref"), Case(*amulet, continuous=True), Case(*amulet)]


def how_decoded(case: Case) -> str:
    if case.method == "pref":
        return "model.generate, fixed batches"
    return "engine, continuous batching" if case.continuous else "engine, fixed batches"


def dataset_throughput(args, tokenizer, model) -> dict:
    """Time every dataset case on the first --dataset_questions questions; the same questions
    and batch size for all."""
    questions = questions_of(args, args.dataset_questions)
    work = build_workload(args, tokenizer, model, questions)
    cases = dataset_cases(args)
    timings = time_cases(cases, args, model, work, args.dataset_repeats, "dataset")
    rows = [{"method": case.method, "setting": case.setting, "decoding": how_decoded(case),
             "key": case.key, "generated_tokens": timings[case.key]["generated_tokens"],
             "wall_seconds": timings[case.key]["wall_seconds"],
             "wall_seconds_median": timings[case.key]["wall_seconds_median"],
             "tokens_per_second": timings[case.key]["tokens_per_second"]}
            for case in cases]
    continuous, fixed = (timings[c.key]["outputs"] for c in cases[1:])
    same = sum(a == b for a, b in zip(continuous, fixed, strict=True))
    return {"questions": len(questions), "batch_size": args.batch_size,
            "repeats": args.dataset_repeats, "rows": rows,
            "identical_continuous_vs_fixed": f"{same}/{len(continuous)}"}


def dataset_ratio(dataset: dict) -> float | None:
    """Amulet's tokens/s with continuous batching over pref's with model.generate."""
    pref, amulet = (dataset["rows"][i]["tokens_per_second"] for i in (0, 1))
    return amulet / pref if amulet is not None and pref else None


def dataset_target(dataset: dict, judge: bool) -> dict:
    value = dataset_ratio(dataset)
    holds = value >= THRESHOLD if judge and value is not None else None
    return {"target": TARGET, "measured": value, "threshold": f">= {THRESHOLD}", "holds": holds}
