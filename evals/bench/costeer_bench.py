"""What CoSteer's third row costs: tokens/s of `costeer` (the large model on the plain prompt,
a small model a quarter of its size on the personalised and plain prompts) against `amulet` on
the large model alone (its [preference; base] rows), and `costeer_self` (the large model its
own SLM: two rows, the LA identity), through the same prompt-rows engine, on one question set.

    python evals/costeer_bench.py --llm_hidden 512 --llm_layers 8 --eval_data demo --limit 8 \
        --batch_size 8 --max_new_tokens 128 --num_threads 2

The models are random Llamas built in memory with the embedded model's tokenizer (so both
share its 49152 ids): the LLM of `--llm_hidden` and `--llm_layers`, the SLM with half the
layers and the hidden size whose parameter count is nearest `--slm_fraction` (0.25) of the
LLM's; or real checkpoints with `--model_name` and `--slm_name`. Greedy, EOS ignored (random
models rarely stop), so every case decodes max_new_tokens per question; tokens/s is the
generated tokens over the wall seconds of one timed run after a two-token warm-up. Prompts are
the project's (README: Prompts).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CASES = ("amulet", "costeer", "costeer_self")


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def random_llama(vocab: int, hidden: int, layers: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, hidden // 64)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=heads, max_position_embeddings=2048,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def quarter_model(llm, vocab: int, fraction: float, seed: int = 1):
    """A random Llama with half the LLM's layers and the hidden size (a multiple of 64) whose
    parameter count is nearest `fraction` of the LLM's."""
    layers = max(1, llm.config.num_hidden_layers // 2)
    want = fraction * parameters(llm)
    best = min(range(64, llm.config.hidden_size + 1, 64),
               key=lambda h: abs(parameters(random_llama(vocab, h, layers, seed)) - want))
    return random_llama(vocab, best, layers, seed)


def measure(llm, slm, tokenizer, questions: list[str], cases: list[str], max_new_tokens: int,
            batch_size: int) -> dict[str, dict]:
    from DecodingMethodsModels.pipeline.methods import (
        CoSteerSettings,
        DecodeSettings,
        run_amulet,
        run_costeer,
    )
    from DecodingMethodsModels.prompts.amulet import (
        encode_prompt,
        preference_sentence,
        template_accepts_system,
    )

    system_role = template_accepts_system(tokenizer)
    pref = [encode_prompt(tokenizer, q, preference_sentence("concise"), system_role)
            for q in questions]
    base = [encode_prompt(tokenizer, q, "", system_role) for q in questions]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    runs = {"amulet": (run_amulet, None), "costeer": (run_costeer, slm),
            "costeer_self": (run_costeer, None)}
    results = {}
    for case in cases:
        runner, small = runs[case]

        def decode(tokens: int, runner=runner, small=small) -> list[list[int]]:
            settings = DecodeSettings(tokens, [], pad, costeer=CoSteerSettings(slm=small))
            out = []
            for start in range(0, len(pref), batch_size):
                chunk = slice(start, start + batch_size)
                out += runner(llm, pref[chunk], base[chunk], settings, 0)
            return out

        decode(2)  # warm-up
        started = time.perf_counter()
        tokens = sum(len(ids) for ids in decode(max_new_tokens))
        seconds = time.perf_counter() - started
        rows = {"amulet": 2, "costeer": 3, "costeer_self": 2}[case]
        results[case] = {"questions": len(questions), "rows_per_question": rows,
                         "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}
        print(f"{case:>13}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} "
              "tokens/s", file=sys.stderr)
    return results


def markdown(results: dict, llm_params: int, slm_params: int) -> str:
    lines = [f"LLM {llm_params / 1e6:.1f} M parameters, SLM {slm_params / 1e6:.1f} M "
             f"({slm_params / llm_params:.2f} of it)", "",
             "| case | rows per question | questions | tokens | seconds | tokens / s |",
             "|---|---:|---:|---:|---:|---:|"]
    for case in CASES:
        if case in results:
            r = results[case]
            lines.append(f"| {case} | {r['rows_per_question']} | {r['questions']} | "
                         f"{r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.2f} |")
    if "costeer" in results and "amulet" in results:
        ratio = results["costeer"]["tokens_per_s"] / results["amulet"]["tokens_per_s"]
        lines += ["", f"costeer / amulet tokens/s: {ratio:.2f}"]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model_name", default=None,
                        help="a real LLM (None: a random Llama of --llm_hidden, --llm_layers)")
    parser.add_argument("--slm_name", default=None,
                        help="a real SLM with the LLM's tokenizer (None: a random quarter)")
    parser.add_argument("--llm_hidden", type=int, default=512)
    parser.add_argument("--llm_layers", type=int, default=8)
    parser.add_argument("--slm_fraction", type=float, default=0.25)
    parser.add_argument("--data_dir", default=str(ROOT / "data"))
    parser.add_argument("--eval_data", default="demo")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--cases", default=",".join(CASES), help=f"from {', '.join(CASES)}")
    parser.add_argument("--num_threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    bad = [c for c in cases if c not in CASES]
    if bad or (args.slm_name and not args.model_name):
        print(f"error: unknown cases {bad}; choose from {', '.join(CASES)}" if bad else
              "error: --slm_name needs --model_name (its LLM)", file=sys.stderr)
        return 2
    if min(args.llm_hidden, args.llm_layers, args.limit, args.batch_size,
           args.max_new_tokens) < 1 or args.llm_hidden % 64 or not 0 < args.slm_fraction <= 1:
        print("error: sizes must be >= 1, --llm_hidden a multiple of 64, --slm_fraction in "
              "(0, 1]", file=sys.stderr)
        return 2
    import torch

    from DecodingMethodsModels.models.loading import (
        EMBEDDED_MODEL,
        load_model,
        load_tokenizer,
        resolve_model,
    )
    from DecodingMethodsModels.pipeline.eval_data import load_dataset

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    tokenizer = load_tokenizer(resolve_model(args.model_name or EMBEDDED_MODEL))
    if args.model_name:
        llm = load_model(resolve_model(args.model_name), "cpu", "float32")
        slm = (load_model(resolve_model(args.slm_name), "cpu", "float32") if args.slm_name
               else quarter_model(llm, llm.config.vocab_size, args.slm_fraction))
    else:
        llm = random_llama(len(tokenizer), args.llm_hidden, args.llm_layers, 0)
        slm = quarter_model(llm, len(tokenizer), args.slm_fraction)
    questions = [q.question for q in
                 load_dataset(Path(args.data_dir), args.eval_data, args.limit).questions]
    results = measure(llm, slm, tokenizer, questions, cases, args.max_new_tokens,
                      args.batch_size)
    table = markdown(results, parameters(llm), parameters(slm))
    print(table)
    if args.out:
        summary = {"llm_parameters": parameters(llm), "slm_parameters": parameters(slm),
                   "threads": torch.get_num_threads(), **results}
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0
