"""How the efficiency benchmark reports: the machine it ran on, the issue's targets judged
against the measurements, the notes, and the markdown tables. No torch work here beyond
reading the environment."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from DecodingMethodsModels.pipeline.provenance import git_dirty, software_facts

QUICK_TARGETS_NOTE = (
    "Targets not judged in --quick mode: 2 questions, 4 new tokens and one run are too little "
    "work for these ratios to mean anything; the values only show that every part ran."
)


def platform_facts() -> dict:
    """The CPU's name and how many logical CPUs this machine has."""
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "logical_cpus": os.cpu_count()}


def environment(args, model, source, device: str) -> dict:
    import torch

    facts = {
        **platform_facts(),
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


def check_targets(args, results: dict, cost: dict, memory: dict, judge: bool = True) -> list[dict]:
    """The issue's targets, each with its measured value and whether it holds: None where a
    part was skipped, and everywhere when `judge` is false (a --quick run)."""
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
        holds = None
        if judge and value is not None:
            holds = value >= threshold if op == ">=" else value <= threshold
        out.append({"target": name, "measured": value, "threshold": f"{op} {threshold}",
                    "holds": holds})
    return out


def failed_targets(targets: list[dict]) -> list[dict]:
    """Targets measured and judged that do not hold (skipped or unjudged ones are not failures)."""
    return [t for t in targets if t["holds"] is False]


def failure_message(failed: list[dict], total: int) -> str:
    listed = "; ".join(f"{t['target']} = {fmt(t['measured'], 3)}, needs {t['threshold']}"
                       for t in failed)
    return f"{len(failed)} of {total} targets failed: {listed}"


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


# ---------------------------------------------------------------- markdown


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict) -> str:
    lines = header_lines(report)
    for section, part in ((methods_table, "methods"), (solver_cost_table, "solver_cost"),
                          (combine_step_table, "combine_step"), (sweep_table, "batch_sweep"),
                          (library_table, "library"), (dataset_table, "dataset"),
                          (runs_table, "runs"), (targets_table, "targets")):
        if report.get(part):
            lines += section(report) + [""]
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def header_lines(report: dict) -> list[str]:
    env, s = report["environment"], report["settings"]
    own_count = " (the dataset part: its own count, below)" if report.get("dataset") else ""
    return [
        f"Machine: {env['cpu']}, {env['logical_cpus']} logical CPUs, {env['torch_threads']} "
        f"torch threads, {env['device']}. Model: {env['model']} ({env['dtype']}). "
        f"python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"commit {str(env['git_commit'])[:10]}"
        f"{' + uncommitted changes' if env.get('git_uncommitted_changes') else ''}.",
        f"Workload: {s['questions']} questions of {s['eval_data']}"
        f"{own_count}, preference "
        f"{s['pref_name']}, batch size {s['batch_size']}, max_new_tokens "
        f"{s['max_new_tokens']}, greedy. Load average at start / end: "
        f"{report['load_average']['start']} / {report['load_average']['end']}.",
        "",
    ]


def methods_table(report: dict) -> list[str]:
    lines = [
        f"Tokens: generated per question, EOS included. Wall: median of "
        f"{report['settings']['repeats']} interleaved run(s) after a warm-up. "
        f"Memory: {report['memory_method']}.",
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
    return lines


def solver_cost_table(report: dict) -> list[str]:
    s = report["settings"]
    base_key = next(iter(report["solver_cost"]))
    base_step = report["solver_cost"][base_key]["seconds_per_step"]
    lines = [
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
    return lines


def combine_step_table(report: dict) -> list[str]:
    first = report["combine_step"][0]
    lines = [
        f"The combination step alone (no model): fp32 log-probs of shape "
        f"({first['rows']}, {first['vocab']}), fastest of {first['repeats']} calls.",
        "",
        "| T | solver | ms / call |",
        "|---:|---|---:|",
    ]
    for row in report["combine_step"]:
        lines.append(f"| {row['iteration_num']} | {row['solver']} | "
                     f"{fmt(row['ms_per_call'], 2)} |")
    return lines


def sweep_table(report: dict) -> list[str]:
    lines = [
        f"Tokens/s against batch size: the same {report['batch_sweep'][0]['questions']} "
        f"questions at every size, median of {report['settings']['sweep_repeats']} run(s).",
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
    return lines


def library_table(report: dict) -> list[str]:
    from evals.bench.library_bench import markdown_table

    s = report["settings"]
    return [f"Library paths (evals/library_bench.py): one batch of (up to) the first "
            f"{s['batch_size']} questions, {s['max_new_tokens']} steps with EOS ignored, one "
            "timed run after a warm-up; ARGS and PAD with k = 10, w = 0.8 and stand-in guides "
            "of the model's size; same tokens: rows equal to the path's engine.", "",
            markdown_table(report["library"])]


def dataset_table(report: dict) -> list[str]:
    data = report["dataset"]
    lines = [
        f"The whole dataset: {data['questions']} questions of "
        f"{report['settings']['eval_data']}, at most {data['batch_size']} in flight, the same "
        f"questions for every row; wall = median of {data['repeats']} run(s) for all of them. "
        "Identical responses, amulet continuous vs fixed batches: "
        f"{data['identical_continuous_vs_fixed']}.",
        "",
        "| method | setting | decoded by | tokens | wall s | tokens / s | vs pref |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    pref = data["rows"][0]["tokens_per_second"]
    for row in data["rows"]:
        lines.append(f"| {row['method']} | {row['setting']} | {row['decoding']} | "
                     f"{fmt(row['generated_tokens'])} | {fmt(row['wall_seconds_median'])} | "
                     f"{fmt(row['tokens_per_second'], 1)} | "
                     f"{fmt(ratio(row['tokens_per_second'], pref))} |")
    return lines


def runs_table(report: dict) -> list[str]:
    runs = report["runs"]
    lines = [
        f"Whole runs: each row one `main.py` process on the first {runs['questions']} questions "
        f"of {report['settings']['eval_data']}, batch size {runs['batch_size']}, "
        f"{runs['max_new_tokens']} new tokens, threads: {runs['threads']}. Tokens: the written "
        "responses re-tokenised (no EOS); decode s: the sidecar's decode_seconds (start-up = "
        "process s - decode s); no warm-up. Greedy, except the sampled rows (--do_sample --top_p "
        "0.95 --temperature 0.7; vs pref: against the sampled pref run).",
        "",
        "| backend | method | tokens | decode s | start-up s | tokens / s | vs pref | "
        "generated tokens (EOS incl.) | generated tokens / s | torch threads |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    # each row against pref on its own backend, greedy or sampled alike
    pref = {(r["backend"], bool(r.get("sampled"))): r.get("tokens_per_second")
            for r in runs["rows"] if r["method"] == "pref"}
    for r in runs["rows"]:
        method = f"{r['method']} (sampled)" if r.get("sampled") else r["method"]
        if r["status"] != "measured":
            lines.append(f"| {r['backend']} | {method} | {r['status']} |" + " |" * 7)
            continue
        base = pref.get((r["backend"], bool(r.get("sampled"))))
        lines.append(f"| {r['backend']} | {method} | {r['response_tokens']} | "
                     f"{fmt(r['decode_seconds'])} | {fmt(r['startup_seconds'])} | "
                     f"{fmt(r['tokens_per_second'], 1)} | "
                     f"{fmt(ratio(r['tokens_per_second'], base))} | "
                     f"{r['generated_tokens']} | {fmt(r['generated_tokens_per_second'], 1)} | "
                     f"{fmt(r['torch_threads'])} |")
    lines += ["", "Commands (one per row):", ""]
    lines += [f"    {r['command']}" for r in runs["rows"]]
    lines += ["", f"On a GPU: `{runs['gpu_command']}`"]
    return lines


def targets_table(report: dict) -> list[str]:
    if not report["targets_judged"]:
        lines = [QUICK_TARGETS_NOTE, "", "| target | measured | threshold |", "|---|---:|---|"]
        return lines + [f"| {t['target']} | {fmt(t['measured'], 3)} | {t['threshold']} |"
                        for t in report["targets"]]
    lines = ["| target | measured | threshold | holds |", "|---|---:|---|---|"]
    for t in report["targets"]:
        holds = t.get("note") or {True: "yes", False: "NO", None: "not measured"}[t["holds"]]
        lines.append(f"| {t['target']} | {fmt(t['measured'], 3)} | {t['threshold']} | "
                     f"{holds} |")
    return lines
