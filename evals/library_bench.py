"""What each way into Amulet costs: tokens/s of the library's paths on one workload.

    OMP_NUM_THREADS=2 python evals/library_bench.py [--data FILE] [--limit 8] [--max_new_tokens 128]

Rows (greedy, one batch of all questions, EOS ignored so that every row decodes the same number
of steps; tokens/s = questions x steps / wall-clock seconds, best of --repeats):
- pref: plain `model.generate` on the preference prompts (one prompt, for scale);
- AmuletProcessor in generate: the logits processor, a second forward per step for the base;
- HF CFG: transformers' `guidance_scale = 1 + k` with the base prompts as negative prompts
  (Amulet's closed form is CFG with that scale; transformers runs the negative prompt as a
  second forward with its own cache, like the processor);
- custom_generate=amulet_generate: the stacked engine reached through `generate`;
- engine: engine.decode_two_prompts, as the CLI runs it.
"same tokens" compares each row's tokens with the engine's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "UltraFeedback_truthful_qa.json"
NEVER = -1  # no token id is negative: an EOS id that never stops a row


def paths(model, pref: list[list[int]], base: list[list[int]], steps: int, pad_id: int) -> dict:
    """Name -> a function decoding the workload once and returning each row's new tokens."""
    import torch

    from DecodingMethodsModels import AmuletProcessor, amulet_generate, amulet_rule
    from DecodingMethodsModels.combine import amulet_ratio
    from DecodingMethodsModels.engine import decode_two_prompts, left_pad

    pref_ids, pref_mask = left_pad(pref, pad_id)
    base_ids, base_mask = left_pad(base, pad_id)
    common = dict(attention_mask=pref_mask, max_new_tokens=steps, do_sample=False,
                  eos_token_id=[NEVER], pad_token_id=pad_id)
    scale = 1.0 + amulet_ratio(60, 2.0, 2.0, 10.0)

    def new_tokens(out) -> list[list[int]]:
        return out[:, pref_ids.shape[1]:].tolist()

    def pref_only():
        return new_tokens(model.generate(pref_ids, **common))

    def processor():
        amulet = AmuletProcessor(model, base_ids, base_mask)
        return new_tokens(model.generate(pref_ids, logits_processor=[amulet], **common))

    def hf_cfg():
        return new_tokens(model.generate(
            pref_ids, guidance_scale=scale, negative_prompt_ids=base_ids,
            negative_prompt_attention_mask=base_mask, **common))

    def custom():
        return new_tokens(model.generate(pref_ids, custom_generate=amulet_generate,
                                         base_ids=base_ids, base_attention_mask=base_mask,
                                         **common))

    def engine():
        rule = amulet_rule(60, 2.0, 2.0, 10.0, "closed_form")
        return decode_two_prompts(model, pref, base, rule, steps, [NEVER], pad_id).token_ids

    def timed(fn):
        def run():
            with torch.inference_mode():
                return fn()
        return run

    return {name: timed(fn) for name, fn in [
        ("pref (plain generate, one prompt)", pref_only),
        ("AmuletProcessor in generate", processor),
        ("HF CFG (guidance_scale = 1 + k)", hf_cfg),
        ("custom_generate=amulet_generate (engine)", custom),
        ("engine (decode_two_prompts, the CLI)", engine),
    ]}


def bench(model, pref, base, steps: int, pad_id: int, repeats: int) -> list[dict]:
    """One row per path: tokens/s (best of `repeats`) and rows with the engine's tokens."""
    results = {}
    for name, run in paths(model, pref, base, steps, pad_id).items():
        best = None
        for _ in range(repeats):
            start = time.perf_counter()
            tokens = run()
            seconds = time.perf_counter() - start
            best = seconds if best is None else min(best, seconds)
        results[name] = (tokens, best)
    engine_tokens = results["engine (decode_two_prompts, the CLI)"][0]
    rows = []
    for name, (tokens, seconds) in results.items():
        count = sum(len(row) for row in tokens)
        same = sum(a == b for a, b in zip(tokens, engine_tokens, strict=True))
        rows.append({"path": name, "tokens": count, "seconds": seconds,
                     "tokens_per_s": count / seconds,
                     "same_tokens": "-" if name.startswith("pref") else f"{same}/{len(tokens)}"})
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| path | tokens | seconds | tokens/s | same tokens as engine |",
             "|---|---:|---:|---:|---|"]
    lines += [f"| {r['path']} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.1f} | "
              f"{r['same_tokens']} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="a JSON list of {index, question}")
    parser.add_argument("--limit", type=int, default=8, help="questions (one batch)")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    import torch
    from transformers.utils import logging

    logging.set_verbosity_error()  # generate warns at every call that EOS id -1 never stops
    from DecodingMethodsModels.loading import (
        EMBEDDED_MODEL,
        eos_token_ids,
        load_model,
        load_tokenizer,
        pad_token_id,
        resolve_model,
    )
    from DecodingMethodsModels.prompts import encode_prompt, preference_sentence

    questions = [item["question"] for item in json.loads(args.data.read_text())[: args.limit]]
    source = resolve_model(EMBEDDED_MODEL)
    model, tokenizer = load_model(source, "cpu", "float32"), load_tokenizer(source)
    pad_id = pad_token_id(tokenizer, eos_token_ids(model, tokenizer))
    sentence = preference_sentence("creative")
    pref = [encode_prompt(tokenizer, q, sentence, True) for q in questions]
    base = [encode_prompt(tokenizer, q, "", True) for q in questions]
    for warm in paths(model, pref, base, 2, pad_id).values():
        warm()  # untimed: first calls allocate and pick kernels
    rows = bench(model, pref, base, args.max_new_tokens, pad_id, args.repeats)
    print(f"{EMBEDDED_MODEL} fp32, {len(questions)} questions x {args.max_new_tokens} steps, "
          f"batch {len(questions)}, greedy, EOS ignored, torch threads "
          f"{torch.get_num_threads()}\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
