"""Token identity of the mixture's four faces, measured on real questions.

With ``k = amulet_ratio(T, alpha, lambda, eta)``, greedy decoding should give the same tokens
for: Amulet (closed form and the T FTRL steps run literally), LA with ratio k, transformers'
classifier-free guidance ``generate(guidance_scale = 1 + k, negative_prompt_ids = base)``, and,
where its top-k allows, the implicit PAD: PAD's score with the decoding model reading the plain
prompt and itself, under the preference prompt, as the reward model (``implicit_pad_scores``).
This module decodes each and reports agreement rates against Amulet's closed form.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from types import SimpleNamespace

import torch

from DecodingMethodsModels.rules.combine import linear_alignment


def implicit_pad_scores(pref_logprobs: torch.Tensor, base_logprobs: torch.Tensor,
                        weight: float, top_k: int = 10) -> torch.Tensor:
    """PAD's greedy score when its reward model is the decoding model under the preference
    prompt: over the ``top_k`` ids of the decoding model's own distribution (the base prompt),
    ``score = z + w (log_softmax_k(u) - log_softmax_k(z))``, which is
    ``(1 - w) log p_base + w log p_pref = LA(ratio = w - 1)`` plus a row constant; -inf
    elsewhere (no id is cut when ``top_k >= V``). Shapes (B, V), (B, V) -> (B, V).
    """
    scores = linear_alignment(pref_logprobs, base_logprobs, weight - 1.0)  # (B, V)
    candidates = base_logprobs.topk(min(top_k, base_logprobs.shape[-1]), dim=-1).indices  # (B, k)
    kept = torch.full_like(scores, float("-inf"))
    return kept.scatter(-1, candidates, scores.gather(-1, candidates))


def agreement(reference: list[list[int]], other: list[list[int]]) -> dict:
    """``identical``: share of questions with the same token ids; ``token_agreement``: mean
    over questions of (common prefix length / longer length), 1 for two empty outputs."""
    same, shares = 0, []
    for a, b in zip(reference, other, strict=True):
        same += a == b
        prefix = 0
        while prefix < min(len(a), len(b)) and a[prefix] == b[prefix]:
            prefix += 1
        shares.append(prefix / max(len(a), len(b)) if a or b else 1.0)
    n = len(reference)
    return {"identical": same / n, "identical_count": same, "n": n,
            "token_agreement": sum(shares) / n}


def measure_identity(args) -> dict:
    """Decode every face of the mixture on ``args.limit`` questions; agreement vs Amulet.

    ``args``: model_name, data_dir, eval_data, limit, pref_name, batch_size, max_new_tokens,
    iteration_num, alpha, player_lambda, eta, pad_top_k (a list), device, dtype,
    threads.
    """
    from DecodingMethodsModels.pipeline.methods import METHOD_RUNNERS, two_prompt
    from DecodingMethodsModels.rules.combine import amulet_ratio
    from evals.bench import efficiency_cases as efficiency

    k = amulet_ratio(args.iteration_num, args.alpha, args.player_lambda, args.eta)
    workload_args = SimpleNamespace(**{**vars(args), "num_beams": 1, "reinforce_ratio": k,
                                       "probe_model": None})
    tokenizer, model, source, device = efficiency.load(workload_args)
    questions = efficiency.questions_of(workload_args, args.limit)
    work = efficiency.build_workload(workload_args, tokenizer, model, questions)
    iterative = replace(work.settings, amulet_solver="iterative")
    faces = {
        "amulet (closed form)": lambda p, b: METHOD_RUNNERS["amulet"](model, p, b,
                                                                       work.settings, 0),
        "amulet (T FTRL steps)": lambda p, b: METHOD_RUNNERS["amulet"](model, p, b,
                                                                        iterative, 0),
        "la (ratio k)": lambda p, b: METHOD_RUNNERS["la"](model, p, b, work.settings, 0),
        "transformers CFG (guidance_scale 1 + k)": lambda p, b: efficiency.hf_cfg(
            model, p, b, work.settings, 1.0 + k),
    }
    for top_k in args.pad_top_k:
        rule = partial(implicit_pad_scores, weight=1.0 + k, top_k=top_k)
        faces[f"implicit PAD (w = 1 + k, top-{top_k})"] = partial(
            lambda p, b, rule: two_prompt(model, p, b, work.settings, rule, 0), rule=rule)
    outputs = {}
    for name, decode in faces.items():
        got = {}
        for rows in work.batches:
            ids = decode([work.pref_ids[i] for i in rows], [work.base_ids[i] for i in rows])
            got.update(zip(rows, ids, strict=True))
        outputs[name] = [got[i] for i in sorted(got)]
    reference = outputs["amulet (closed form)"]
    rows = [{"face": name, **agreement(reference, ids),
             "tokens": sum(len(x) for x in ids)} for name, ids in outputs.items()]
    return {
        "model": source.short_name, "device": device, "dataset": args.eval_data,
        "questions": len(questions), "pref_name": args.pref_name,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "T": args.iteration_num, "alpha": args.alpha, "lambda": args.player_lambda,
        "eta": args.eta, "k": k, "greedy": True, "rows": rows,
    }


def identity_markdown(result: dict) -> str:
    lines = [
        f"Agreement with Amulet (closed form), greedy, {result['questions']} questions of "
        f"{result['dataset']}, preference {result['pref_name']}, {result['max_new_tokens']} "
        f"new tokens, {result['model']}; T={result['T']}, alpha={result['alpha']:g}, "
        f"lambda={result['lambda']:g}, eta={result['eta']:g}, k={result['k']:.4f}.",
        "",
        "| decoded as | identical responses | token agreement | tokens |",
        "|---|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['face']} | {row['identical_count']}/{row['n']} | "
                     f"{row['token_agreement']:.3f} | {row['tokens']} |")
    return "\n".join(lines)
