"""What each way into the library costs: tokens/s of its paths on one workload.

    OMP_NUM_THREADS=1 python evals/library_bench.py [--data_dir data] [--eval_data demo] \
        [--limit 8] [--max_new_tokens 128] [--topk 10] [--weight 0.8]

Greedy, one batch of all questions, EOS ignored so that every row decodes the same number of
steps; tokens/s = questions x steps / wall-clock seconds of the best of --repeats runs after an
untimed warm-up. "same tokens" compares each row's tokens with its engine's.

Amulet (the paper's settings, T = 60):
- pref: plain `model.generate` on the preference prompts (one prompt, for scale);
- AmuletProcessor in generate: the logits processor, a second forward per step for the base;
- HF CFG: transformers' `guidance_scale = 1 + k` with the base prompts as negative prompts
  (Amulet's closed form is CFG with that scale; transformers runs the negative prompt as a
  second forward with its own cache, like the processor);
- custom_generate=amulet_generate: the stacked engine reached through `generate`;
- engine: engine.decode_two_prompts, as the CLI runs it.

Reward-guided (k = --topk candidates, weight --weight), each processor beside its engine
(reward_guided.py): ArgsProcessor / decode_args with a reward model of the decoding model's
size (its backbone with a random one-label head), PadProcessor / decode_pad with a second copy
of the decoding model as PersRM, and the implicit PAD (PadProcessor given the model itself on
the preference prompt, generate on the base prompt) / decode_pad_implicit. The stand-in guides
are evals/rg_bench.py's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NEVER = -1  # no token id is negative: an EOS id that never stops a row
ENGINE = "engine (decode_two_prompts, the CLI)"


def _timed(fn):
    def run():
        import torch

        with torch.inference_mode():
            return fn()
    return run


def paths(model, pref: list[list[int]], base: list[list[int]], steps: int, pad_id: int) -> dict:
    """Name -> a function decoding the workload once and returning each row's new tokens."""

    from DecodingMethodsModels import AmuletProcessor, amulet_generate, amulet_rule
    from DecodingMethodsModels.engines.core import left_pad
    from DecodingMethodsModels.engines.prompt_rows import decode_two_prompts
    from DecodingMethodsModels.rules.combine import amulet_ratio

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

    return {name: _timed(fn) for name, fn in [
        ("pref (plain generate, one prompt)", pref_only),
        ("AmuletProcessor in generate", processor),
        ("HF CFG (guidance_scale = 1 + k)", hf_cfg),
        ("custom_generate=amulet_generate (engine)", custom),
        (ENGINE, engine),
    ]}


def guided_paths(model, guides: dict, pref: list[list[int]], base: list[list[int]], steps: int,
                 pad_id: int, topk: int, weight: float) -> dict:
    """Name -> (a function decoding the workload once, the name of the path it is checked
    against, or None for an engine): ARGS, PAD and implicit PAD, processor and engine."""
    from DecodingMethodsModels import (
        ArgsProcessor,
        GuidedSettings,
        PadProcessor,
        decode_args,
        decode_pad,
        decode_pad_implicit,
    )
    from DecodingMethodsModels.engines.core import left_pad

    pref_ids, pref_mask = left_pad(pref, pad_id)
    base_ids, base_mask = left_pad(base, pad_id)
    settings = GuidedSettings(weight=weight, max_new_tokens=steps, eos_ids=(), pad_id=pad_id,
                              topk=topk, ignore_eos=True)
    common = dict(max_new_tokens=steps, do_sample=False, eos_token_id=[NEVER],
                  pad_token_id=pad_id)
    options = dict(weight=weight, topk=topk)

    def in_generate(ids, mask, make_processor):
        def run():
            out = model.generate(ids, attention_mask=mask, logits_processor=[make_processor()],
                                 **common)
            return out[:, ids.shape[1]:].tolist()
        return run

    rm, persrm = guides["reward_model"], guides["persrm"]
    args_engine, pad_engine = "decode_args (ARGS engine)", "decode_pad (PAD engine)"
    implicit_engine = "decode_pad_implicit (implicit PAD engine)"
    table = {
        "ArgsProcessor in generate": (in_generate(
            pref_ids, pref_mask, lambda: ArgsProcessor(rm, pref_ids, pref_mask, **options)),
            args_engine),
        args_engine: (lambda: decode_args(model, rm, pref, settings).token_ids, None),
        "PadProcessor in generate": (in_generate(
            pref_ids, pref_mask, lambda: PadProcessor(persrm, pref_ids, pref_mask, **options)),
            pad_engine),
        pad_engine: (lambda: decode_pad(model, persrm, pref, settings).token_ids, None),
        "PadProcessor, implicit (the model on the preference prompt), in generate": (
            in_generate(base_ids, base_mask,
                        lambda: PadProcessor(model, pref_ids, pref_mask, **options)),
            implicit_engine),
        implicit_engine: (lambda: decode_pad_implicit(model, base, pref, settings).token_ids,
                          None),
    }
    return {name: (_timed(fn), against) for name, (fn, against) in table.items()}


def time_paths(runs: dict, repeats: int) -> dict:
    """Name -> (tokens of the last run, best seconds of `repeats`) for name -> function."""
    results = {}
    for name, run in runs.items():
        best = None
        for _ in range(repeats):
            start = time.perf_counter()
            tokens = run()
            seconds = time.perf_counter() - start
            best = seconds if best is None else min(best, seconds)
        results[name] = (tokens, best)
    return results


def table_rows(results: dict, against: dict) -> list[dict]:
    """One row per path; `against` maps a path to the path whose tokens it must equal."""
    rows = []
    for name, (tokens, seconds) in results.items():
        count = sum(len(row) for row in tokens)
        same = "-"
        if against.get(name):
            reference = results[against[name]][0]
            same = f"{sum(a == b for a, b in zip(tokens, reference, strict=True))}/{len(tokens)}"
        rows.append({"path": name, "tokens": count, "seconds": seconds,
                     "tokens_per_s": count / seconds, "same_tokens": same})
    return rows


def bench(model, pref, base, steps: int, pad_id: int, repeats: int) -> list[dict]:
    """Amulet's paths: tokens/s (best of `repeats`) and rows with the engine's tokens."""
    runs = paths(model, pref, base, steps, pad_id)
    against = {name: ENGINE for name in runs if not name.startswith("pref") and name != ENGINE}
    return table_rows(time_paths(runs, repeats), against)


def guided_bench(model, guides: dict, pref, base, steps: int, pad_id: int, repeats: int,
                 topk: int = 10, weight: float = 0.8) -> list[dict]:
    """ARGS and PAD paths: tokens/s (best of `repeats`), rows with their engine's tokens."""
    runs = guided_paths(model, guides, pref, base, steps, pad_id, topk, weight)
    results = time_paths({name: run for name, (run, _) in runs.items()}, repeats)
    return table_rows(results, {name: against for name, (_, against) in runs.items()})


def measure(model, guides: dict, pref, base, steps: int, pad_id: int, repeats: int = 1,
            topk: int = 10, weight: float = 0.8) -> list[dict]:
    """Every path's row, Amulet's then the reward-guided ones, after an untimed warm-up."""
    warm = min(steps, 2)
    for run in paths(model, pref, base, warm, pad_id).values():
        run()  # first calls allocate and pick kernels
    for run, _ in guided_paths(model, guides, pref, base, warm, pad_id, topk, weight).values():
        run()
    return (bench(model, pref, base, steps, pad_id, repeats)
            + guided_bench(model, guides, pref, base, steps, pad_id, repeats, topk, weight))


def stand_in_guides(model, source) -> dict:
    """rg_bench's stand-in reward model and PersRM, on the model's device and in its dtype."""
    from DecodingMethodsModels.engines.core import model_input_device
    from evals.bench.rg_bench import stand_in_guides as load_guides

    guides = load_guides(source, ["pad", "args"])
    place = dict(device=model_input_device(model), dtype=model.dtype)
    return {name: guide.to(**place) for name, guide in guides.items()}


def efficiency_part(args, model, source, work) -> list[dict]:
    """evals/efficiency.py's `library` part: every path on one batch of its workload's first
    --batch_size questions, --max_new_tokens steps, one timed run."""
    from transformers.utils import logging

    logging.set_verbosity_error()  # generate warns at every call that EOS id -1 never stops
    pref, base = work.pref_ids[: args.batch_size], work.base_ids[: args.batch_size]
    return measure(model, stand_in_guides(model, source), pref, base, args.max_new_tokens,
                   work.pad_id)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| path | tokens | seconds | tokens/s | same tokens as engine |",
             "|---|---:|---:|---:|---|"]
    lines += [f"| {r['path']} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.1f} | "
              f"{r['same_tokens']} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name", default="SmolLM2-135M-Instruct",
                        help="embedded default, a local model directory, a .gguf file or a hub id")
    parser.add_argument("--data_dir", default=os.environ.get("AMULET_DATA_DIR", str(ROOT / "data")))
    parser.add_argument("--eval_data", default="demo", help="one dataset name in --data_dir")
    parser.add_argument("--limit", type=int, default=8, help="questions (one batch)")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--topk", type=int, default=10, help="ARGS and PAD candidates")
    parser.add_argument("--weight", type=float, default=0.8, help="ARGS and PAD weight w")
    args = parser.parse_args(argv)

    import torch
    from transformers.utils import logging

    from DecodingMethodsModels.errors import UserError
    from DecodingMethodsModels.models.loading import (
        eos_token_ids,
        load_model,
        load_tokenizer,
        pad_token_id,
        resolve_model,
    )
    from DecodingMethodsModels.pipeline.eval_data import load_dataset
    from DecodingMethodsModels.prompts.amulet import (
        encode_prompt,
        preference_sentence,
        template_accepts_system,
    )

    logging.set_verbosity_error()  # generate warns at every call that EOS id -1 never stops
    try:
        dataset = load_dataset(Path(args.data_dir), args.eval_data, args.limit)
        source = resolve_model(args.model_name)
        model, tokenizer = load_model(source, "cpu", "float32"), load_tokenizer(source)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    questions = [q.question for q in dataset.questions]
    pad_id = pad_token_id(tokenizer, eos_token_ids(model, tokenizer))
    sentence, system_role = preference_sentence("creative"), template_accepts_system(tokenizer)
    pref = [encode_prompt(tokenizer, q, sentence, system_role) for q in questions]
    base = [encode_prompt(tokenizer, q, "", system_role) for q in questions]
    rows = measure(model, stand_in_guides(model, source), pref, base, args.max_new_tokens,
                   pad_id, args.repeats, args.topk, args.weight)
    print(f"{args.model_name} fp32, {len(questions)} questions of {args.eval_data} x "
          f"{args.max_new_tokens} steps, batch {len(questions)}, greedy, EOS ignored, "
          f"k = {args.topk}, w = {args.weight}, torch threads {torch.get_num_threads()}\n")
    print(markdown_table(rows))
    return 0

