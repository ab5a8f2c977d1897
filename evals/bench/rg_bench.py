"""Decode-time cost of reward-guided decoding: the cached, batched engine
(DecodingMethodsModels/engines/reward_guided.py) against its cache-free one-question-at-a-time
reference (engines/reference.py) and against plain greedy `generate` on the preference
prompt (pref), on one model and one question set.

    python evals/rg_bench.py --eval_data UltraFeedback_truthful_qa --limit 8 --batch_size 8 \
        --max_new_tokens 128 --cases all --naive_limit 2 --num_threads 2

Greedy, k candidates; tokens are generated tokens per question (the ending EOS included),
tokens/s their sum over wall-clock seconds of one timed run after a short warm-up. Prompts are
Amulet's (README: Prompts): implicit PAD decodes on the base prompt, guided by the same
model on the preference prompt. ARGS's reward model and PAD's PersRM are stand-ins of the
decoding model's size: its backbone with a random one-label head, and a second copy of it.
The reference is slow (it re-reads every sequence at every step), so `--naive_limit` times it
on the first questions only; a per-token cost that grows with the length makes a short naive
run, if anything, faster per token than a long one.

It prints a markdown table and the targets (implicit PAD >= 0.4 x pref's tokens/s; PAD and ARGS
each >= 10 x their naive reference) and exits 1 when a measured target fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from evals.threads import NUM_THREADS_HELP, THREADS_TYPE, set_threads

ROOT = Path(__file__).resolve().parents[2]

CASES = ("pref", "implicit", "implicit_naive", "pad", "pad_naive", "args", "args_naive")
# (name, numerator case, denominator case, threshold): each holds when the ratio of tokens/s
# is at least the threshold
TARGETS = (
    ("implicit PAD / pref", "implicit", "pref", 0.4),
    ("PAD engine / naive PAD", "pad", "pad_naive", 10.0),
    ("ARGS engine / naive ARGS", "args", "args_naive", 10.0),
)


def timed_tokens(fn: Callable[[], list[list[int]]]) -> dict:
    """Run `fn` once; its generated tokens, wall seconds and tokens/s."""
    start = time.perf_counter()
    outputs = fn()
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for ids in outputs)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "outputs": outputs}


def case_runner(case: str, model, guides: dict, pref_ids, base_ids, settings, batch_size: int):
    """A function () -> generated ids per question for one case over all its questions."""
    from DecodingMethodsModels.engines.reference import (
        reference_args,
        reference_pad,
        reference_pad_implicit,
    )
    from DecodingMethodsModels.engines.reward_guided import (
        decode_args,
        decode_pad,
        decode_pad_implicit,
    )
    from DecodingMethodsModels.pipeline.methods import DecodeSettings, generate_on

    def batched(decode):
        def run():
            outputs = []
            for start in range(0, len(pref_ids), batch_size):
                chunk = slice(start, start + batch_size)
                outputs += decode(pref_ids[chunk], base_ids[chunk])
            return outputs
        return run

    if case == "pref":
        plain = DecodeSettings(settings.max_new_tokens, list(settings.eos_ids), settings.pad_id)
        return batched(lambda pref, base: generate_on(model, pref, plain, 1, 0))
    engines = {
        "implicit": lambda p, b: decode_pad_implicit(model, b, p, settings).token_ids,
        "pad": lambda p, b: decode_pad(model, guides["persrm"], p, settings).token_ids,
        "args": lambda p, b: decode_args(model, guides["reward_model"], p, settings).token_ids,
    }
    references = {
        "implicit_naive": lambda p, b: reference_pad_implicit(model, b, p, settings),
        "pad_naive": lambda p, b: reference_pad(model, guides["persrm"], p, settings),
        "args_naive": lambda p, b: reference_args(model, guides["reward_model"], p, settings),
    }
    if case in engines:
        return batched(engines[case])
    return batched(references[case])


def stand_in_guides(source, cases: list[str]) -> dict:
    """A reward model and a PersRM of the decoding model's size, loaded only if needed."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from DecodingMethodsModels.models.loading import conversion_cache, load_model

    guides = {}
    if any(c.startswith("pad") for c in cases):
        guides["persrm"] = load_model(source, "cpu", "float32")
    if any(c.startswith("args") for c in cases):
        saved = conversion_cache(source, "model")
        path = str(saved) if saved is not None and saved.is_dir() else source.path
        torch.manual_seed(0)
        guides["reward_model"] = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch.float32).eval()
    return guides


def measure(model, tokenizer, questions: list[str], cases: list[str], guides: dict,
            max_new_tokens: int = 128, batch_size: int = 8, topk: int = 10,
            weight: float = 0.8, naive_limit: int | None = None,
            pref_name: str = "creative") -> dict[str, dict]:
    """tokens/s of each case on `questions` (greedy, k = `topk`, weight w), with a warm-up."""
    from DecodingMethodsModels.engines.reward_guided import GuidedSettings
    from DecodingMethodsModels.models.loading import eos_token_ids, pad_token_id
    from DecodingMethodsModels.prompts.amulet import (
        encode_prompt,
        preference_sentence,
        template_accepts_system,
    )

    system_role = template_accepts_system(tokenizer)
    sentence = preference_sentence(pref_name)
    pref_ids = [encode_prompt(tokenizer, q, sentence, system_role) for q in questions]
    base_ids = [encode_prompt(tokenizer, q, "", system_role) for q in questions]
    eos_ids = eos_token_ids(model, tokenizer)
    settings = GuidedSettings(weight=weight, max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                              pad_id=pad_token_id(tokenizer, eos_ids), topk=topk)
    warm = GuidedSettings(weight=weight, max_new_tokens=2, eos_ids=eos_ids,
                          pad_id=settings.pad_id, topk=topk)
    results = {}
    for case in cases:
        count = naive_limit if case.endswith("_naive") and naive_limit else len(questions)
        prompts = (pref_ids[:count], base_ids[:count])
        case_runner(case, model, guides, *prompts, warm, batch_size)()
        result = timed_tokens(case_runner(case, model, guides, *prompts, settings, batch_size))
        results[case] = {"questions": count, **result}
        print(f"{case:>15}: {count} questions, {result['tokens']} tokens in "
              f"{result['seconds']:.1f} s = {result['tokens_per_s']:.1f} tokens/s",
              file=sys.stderr)
    return results


def agreement(results: dict, engine: str, naive: str) -> bool | None:
    """Whether the engine's outputs equal the naive ones on the questions both decoded."""
    if engine not in results or naive not in results:
        return None
    count = results[naive]["questions"]
    return results[engine]["outputs"][:count] == results[naive]["outputs"]


def targets(results: dict) -> list[dict]:
    """Each target's measured ratio (None where a case was not run) and whether it holds."""
    out = []
    for name, top, bottom, threshold in TARGETS:
        ratio = None
        if top in results and bottom in results:
            ratio = results[top]["tokens_per_s"] / results[bottom]["tokens_per_s"]
        out.append({"target": name, "measured": ratio, "threshold": threshold,
                    "holds": None if ratio is None else ratio >= threshold})
    return out


def markdown(summary: dict, checks: list[dict]) -> str:
    """The cases as a table of tokens and tokens/s, then the targets."""
    lines = ["| case | questions | tokens | seconds | tokens / s | same tokens as naive |",
             "|---|---:|---:|---:|---:|---|"]
    for case in CASES:
        if case in summary:
            row = summary[case]
            same = {True: "yes", False: "NO", None: ""}[row.get("same_tokens_as_naive")]
            lines.append(f"| {case} | {row['questions']} | {row['tokens']} | "
                         f"{row['seconds']:.1f} | {row['tokens_per_s']:.2f} | {same} |")
    lines += ["", "| target | measured | threshold | holds |", "|---|---:|---:|---|"]
    for check in checks:
        measured = "-" if check["measured"] is None else f"{check['measured']:.2f}"
        holds = {True: "yes", False: "NO", None: "not measured"}[check["holds"]]
        lines.append(f"| {check['target']} | {measured} | >= {check['threshold']} | {holds} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model_name", default="SmolLM2-135M-Instruct")
    parser.add_argument("--data_dir", default=str(ROOT / "data"),
                        help="where datasets live (data/fetch_benchmarks.py puts them here)")
    parser.add_argument("--eval_data", default="UltraFeedback_truthful_qa")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--weight", type=float, default=0.8)
    parser.add_argument("--naive_limit", type=int, default=None,
                        help="time the naive reference on the first N questions only")
    parser.add_argument("--cases", default="pref,implicit,implicit_naive",
                        help=f"comma-separated, from {', '.join(CASES)}; or all")
    parser.add_argument("--num_threads", type=THREADS_TYPE, default=None, metavar="auto|N",
                        help=NUM_THREADS_HELP)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    import torch

    from DecodingMethodsModels.models.loading import load_model, load_tokenizer, resolve_model
    from DecodingMethodsModels.pipeline.eval_data import load_dataset

    args = build_parser().parse_args(argv)
    cases = list(CASES) if args.cases == "all" else [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        print(f"error: unknown cases {unknown}; choose from {', '.join(CASES)}", file=sys.stderr)
        return 2
    if args.num_threads is not None and args.num_threads < 1:
        print(f"error: --num_threads must be >= 1, got {args.num_threads}", file=sys.stderr)
        return 2
    set_threads(args.num_threads)
    source = resolve_model(args.model_name)
    tokenizer, model = load_tokenizer(source), load_model(source, "cpu", "float32")
    questions = [q.question for q in
                 load_dataset(Path(args.data_dir), args.eval_data, args.limit).questions]
    results = measure(model, tokenizer, questions, cases, stand_in_guides(source, cases),
                      args.max_new_tokens, args.batch_size, args.topk, args.weight,
                      args.naive_limit)
    summary = {case: {k: v for k, v in r.items() if k != "outputs"}
               for case, r in results.items()}
    for method in ("implicit", "pad", "args"):
        same = agreement(results, method, f"{method}_naive")
        if same is not None:
            summary[method]["same_tokens_as_naive"] = same
    checks = targets(results)
    table = markdown(summary, checks)
    summary["threads"] = torch.get_num_threads()
    summary["targets"] = checks
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
        Path(args.out).with_suffix(".md").write_text(table)
    return 1 if any(check["holds"] is False for check in checks) else 0

