"""GPT-4o pairwise win rates of the target method against each baseline (paper, section 5).

Run from the repository root::

    python evals/gpt_evals.py --model_name Llama-3.1-8B-Instruct \\
        --eval_data personal_preference_eval_preference_data --pref_name creative
    python evals/gpt_evals.py --model_name all --eval_data all --pref_name creative,verbose
    python evals/gpt_evals.py ... --judge_model path/to/chat-model    # a local judge

``--pref_name``, ``--model_name`` and ``--eval_data`` take comma lists, ``all`` meaning every
value found under ``--output_dir``; each setting holding every method's file is judged.
The API key comes from the environment only (see ``openai_key_info.py``); a local judge
(``--judge_backend local``, or a directory, .gguf file or the embedded model as
``--judge_model``) needs none. Every judgment is cached in ``--cache_path`` as it arrives: a
rerun or a resumed crash asks nothing twice. With ``--all_pairs`` every pair of methods is
judged and ranked by Bradley-Terry (choix), a tie counting as half a win for each side.
``--judge_protocol args`` judges with ARGS's GPT-4 protocol instead of the paper's;
``--both_orders`` judges each pair with each method shown first once (position bias and order
consistency; an order-dependent pair counts as a tie). Every table shows the
length-controlled win rate (AlpacaEval 2) beside the raw one. The library entry point is
:func:`evals.judge.win_rate.evaluate`; ``evals/judge_agreement.py`` compares two judges' verdicts.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from evals.errors import EvalError, exit_code
from evals.judge.judge import JudgePreset
from evals.judge.judge_client import RetryPolicy
from evals.judge.judge_protocols import DEFAULT_PROTOCOL, PROTOCOLS, get_protocol
from evals.scoring.responses import DEFAULT_METHODS, RunKey, discover_runs, split_methods
from evals.threads import NUM_THREADS_HELP, THREADS_TYPE, set_threads
from openai_key_info import redact

SETTING_FLAGS = ("--pref_name", "--model_name", "--eval_data")  # in RunKey's order


def build_parser() -> argparse.ArgumentParser:
    """The command line; defaults are the paper's judge settings."""
    parser = argparse.ArgumentParser(
        description="Pairwise judge win rates (Amulet, ICLR 2025, section 5): GPT-4o by "
                    "default, or a local chat model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _response_flags(parser.add_argument_group("responses"))
    _judge_flags(parser.add_argument_group("judge"))
    _output_flags(parser.add_argument_group("outputs"))
    return parser


def _response_flags(data) -> None:
    data.add_argument("--output_dir", default="responses/", help="root of main.py's outputs")
    found = "; comma list, 'all': every one found under --output_dir"
    data.add_argument("--model_name", required=True, help="model short name directory" + found)
    data.add_argument("--eval_data", required=True, help="dataset name directory" + found)
    data.add_argument("--pref_name", required=True,
                      help="preference name directory (PAD principles too)" + found)
    data.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                      help="comma list of the methods' files ({method}.json) to compare")
    data.add_argument("--target", default="amulet", help="method compared to every other")
    data.add_argument("--all_pairs", action="store_true",
                      help="judge every pair and rank by Bradley-Terry")
    data.add_argument("--both_orders", action="store_true",
                      help="judge every pair twice, each method shown first once: reports the "
                           "order consistency and position bias; an order-dependent pair "
                           "counts as a tie (twice the requests)")
    data.add_argument("--max_questions", type=int, default=None,
                      help="only the first N questions (by index), e.g. to bound cost")


def _judge_flags(judge) -> None:
    judge.add_argument("--judge_protocol", default=DEFAULT_PROTOCOL, choices=tuple(PROTOCOLS),
                       help="prompts, answer parser and decoding defaults: amulet (the paper's "
                            "GPT-4o verdict), args (ARGS's GPT-4 scores 1-10)")

    def protocol_default(field: str) -> str:
        # "%(default).0s" prints nothing: it stops the formatter adding "(default: None)"
        values = ", ".join(f"{name}: {getattr(p, field)}" for name, p in PROTOCOLS.items())
        return f" (default: the protocol's: {values})%(default).0s"

    judge.add_argument("--judge_model", default=None,
                       help="API model (or Azure deployment) name" + protocol_default("model")
                            + "; or a local chat model: a "
                            "directory, a .gguf file, SmolLM2-135M-Instruct (embedded) or, with "
                            "--judge_backend local, a hub id")
    judge.add_argument("--judge_backend", default="auto", choices=("auto", "openai", "local"),
                       help="local: transformers on this machine, greedy; auto: local for a "
                            "directory, .gguf file or the embedded model, else openai")
    judge.add_argument("--judge_device", default="auto", help="local judge: auto, cpu, cuda...")
    judge.add_argument("--num_threads", type=THREADS_TYPE, default=None, metavar="auto|N",
                       help="local judge: " + NUM_THREADS_HELP)
    judge.add_argument("--judge_dtype", default="auto",
                       help="local judge: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    judge.add_argument("--judge_base_url", default=None,
                       help="OpenAI-compatible endpoint; default $OPENAI_BASE_URL or OpenAI")
    judge.add_argument("--judge_temperature", type=float, default=None,
                       help="the judge's sampling temperature" + protocol_default("temperature"))
    judge.add_argument("--judge_top_p", type=float, default=None,
                       help="the judge's nucleus top_p" + protocol_default("top_p"))
    judge.add_argument("--judge_max_tokens", type=int, default=None,
                       help="the judge's answer length limit" + protocol_default("max_tokens"))
    judge.add_argument("--judge_seed", type=int, default=None,
                       help="sent with every request" + protocol_default("seed"))
    judge.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    judge.add_argument("--max_concurrency", type=int, default=8, help="parallel requests")
    judge.add_argument("--max_retries", type=int, default=6,
                       help="retries of a request on 429/5xx/timeouts before stopping")
    judge.add_argument("--max_invalid_retries", type=int, default=2,
                       help="re-asks after an unparseable answer before recording 'invalid' "
                            "(each with the judge seed + k and a reminder of the three answers)")
    judge.add_argument("--retry_base_delay", type=float, default=1.0,
                       help="first backoff delay in seconds (doubles each retry)")
    judge.add_argument("--retry_max_delay", type=float, default=60.0,
                       help="longest backoff delay in seconds")
    judge.add_argument("--retry_invalid", action="store_true",
                       help="re-ask comparisons cached as invalid")


def _output_flags(out) -> None:
    out.add_argument("--results_dir", default="results/", help="tables, JSON and figures")
    out.add_argument("--cache_path", default=None,
                     help="judge cache (JSONL); default {results_dir}/judge_cache.jsonl")
    out.add_argument("--bootstrap", type=int, default=1000,
                     help="bootstrap replicates over questions (0: no intervals)")
    out.add_argument("--bt_alpha", type=float, default=0.01,
                     help="Bradley-Terry regularisation (choix alpha)")
    out.add_argument("--seed", type=int, default=42,
                     help="default of --swap_seed and --bootstrap_seed; changing it changes the "
                          "order shown and so re-asks the judge")
    # No default of their own (SUPPRESS): unset, they take --seed's value.
    out.add_argument("--swap_seed", type=int, default=argparse.SUPPRESS,
                     help="seed of which text is shown first (part of every judgment's cache "
                          "key: a new value re-asks the judge) (default: --seed)")
    out.add_argument("--bootstrap_seed", type=int, default=argparse.SUPPRESS,
                     help="seed of the bootstrap resampling only (a new value asks the judge "
                          "nothing) (default: --seed)")
    out.add_argument("--no_plot", action="store_true", help="no win-rate figure")
    out.add_argument("--no_progress", action="store_true", help="no progress bar")
    out.add_argument("--dry_run", action="store_true",
                     help="only count comparisons and cache hits; ask nothing")


def judge_preset(args: argparse.Namespace) -> tuple[JudgePreset, str | None]:
    """``(preset, local model source or None)`` for the judge the arguments name; a decoding
    flag left unset takes the protocol's value."""
    from evals.judge.local_judge import is_local_model, local_preset

    protocol = get_protocol(args.judge_protocol)
    model = args.judge_model or protocol.model
    max_tokens = protocol.max_tokens if args.judge_max_tokens is None else args.judge_max_tokens
    seed = protocol.seed if args.judge_seed is None else args.judge_seed
    local = args.judge_backend == "local" or (
        args.judge_backend == "auto" and is_local_model(model))
    if not local:
        return protocol.preset(
            model=model, max_tokens=max_tokens, seed=seed,
            temperature=(protocol.temperature if args.judge_temperature is None
                         else args.judge_temperature),
            top_p=protocol.top_p if args.judge_top_p is None else args.judge_top_p,
        ), None
    if args.judge_temperature not in (None, 0):
        raise EvalError(f"a local judge decodes greedily: --judge_temperature "
                        f"{args.judge_temperature:g} cannot apply (leave it at 0)")
    if max_tokens < 1:
        raise EvalError("--judge_max_tokens must be >= 1")
    if args.judge_temperature is None and protocol.temperature != 0:
        print(f"warning: protocol {protocol.name} samples at temperature "
              f"{protocol.temperature:g}; a local judge decodes greedily", file=sys.stderr)
    return local_preset(model, max_tokens, seed, args.judge_device, args.judge_dtype,
                        protocol.version), model


def setting_names(text: str, flag: str) -> list[str] | None:
    """A comma list of names; ``None`` when it holds ``all`` (every value found)."""
    names = split_methods(text, flag)
    return None if "all" in names else names


def select_runs(output_dir: Path, methods: list[str], filters: list[list[str] | None]
                ) -> list[RunKey]:
    """The settings to judge: the one named (checked by ``load_run`` with its precise errors),
    or every ``pref/model/dataset`` directory under ``output_dir`` that the filters keep and
    that holds every method's file (incomplete ones are skipped with a warning)."""
    if all(f is not None and len(f) == 1 for f in filters):
        return [RunKey(*(f[0] for f in filters))]
    if not output_dir.is_dir():
        raise EvalError(f"output dir {output_dir} does not exist (pass --output_dir)")
    present = [d.relative_to(output_dir).parts for d in output_dir.glob("*/*/*") if d.is_dir()]
    for level, (flag, names) in enumerate(zip(SETTING_FLAGS, filters, strict=True)):
        have = sorted({parts[level] for parts in present})
        unknown = [n for n in names or [] if n not in have]
        if unknown:
            raise EvalError(f"{flag} {','.join(unknown)}: no such setting under {output_dir} "
                            f"(found: {', '.join(have) or 'nothing'})")
    runs, skipped = discover_runs(output_dir, methods, *filters)
    for note in skipped:
        print(f"warning: skipping incomplete setting {note}", file=sys.stderr)
    if not runs:
        raise EvalError(f"no setting under {output_dir} has all of {', '.join(methods)}"
                        + (f" (incomplete: {len(skipped)})" if skipped else ""))
    return runs


def configs_from_args(args: argparse.Namespace) -> list:
    """One validated :class:`evals.judge.win_rate.GptEvalConfig` per setting to judge."""
    methods = split_methods(args.methods)
    filters = [setting_names(getattr(args, flag.lstrip("-")), flag) for flag in SETTING_FLAGS]
    runs = select_runs(Path(args.output_dir), methods, filters)
    config = config_from_args(args, runs[0])
    return [replace(config, run=run) for run in runs]


def config_from_args(args: argparse.Namespace, run: RunKey):
    """Turn parsed arguments into a validated :class:`evals.judge.win_rate.GptEvalConfig`."""
    from evals.judge.win_rate import GptEvalConfig

    preset, judge_source = judge_preset(args)
    retry = RetryPolicy(
        max_retries=args.max_retries, max_invalid_retries=args.max_invalid_retries,
        base_delay=args.retry_base_delay, max_delay=args.retry_max_delay,
    )
    return GptEvalConfig(
        run=run, judge_source=judge_source, judge_device=args.judge_device,
        output_dir=Path(args.output_dir), results_dir=Path(args.results_dir),
        cache_path=Path(args.cache_path or Path(args.results_dir) / "judge_cache.jsonl"),
        methods=tuple(split_methods(args.methods)),
        target=args.target, all_pairs=args.all_pairs, preset=preset,
        protocol=args.judge_protocol, both_orders=args.both_orders,
        base_url=args.judge_base_url, timeout=args.timeout, retry=retry,
        retry_invalid=args.retry_invalid, max_concurrency=args.max_concurrency,
        bootstrap=args.bootstrap, bt_alpha=args.bt_alpha,
        swap_seed=getattr(args, "swap_seed", args.seed),
        bootstrap_seed=getattr(args, "bootstrap_seed", args.seed),
        max_questions=args.max_questions, dry_run=args.dry_run, plot=not args.no_plot,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; user errors become one stderr line and exit code 2, failures while
    judging (the API) exit code 1."""
    args = build_parser().parse_args(argv)
    try:
        configs = configs_from_args(args)
        if configs[0].is_local:
            set_threads(args.num_threads)
        from evals.judge.win_rate import LazyLocalJudge, evaluate, write_summary

        local_judge = LazyLocalJudge(configs[0]) if configs[0].is_local else None
        results, failed = [], False
        for config in configs:
            result = evaluate(config, local_judge)
            results.append(result)
            failed |= report(config, result)
    except EvalError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("interrupted: finished judgments are cached; rerun to resume", file=sys.stderr)
        return 130
    if configs[0].dry_run and len(configs) > 1:
        summed = {k: sum(r["counts"][k] for r in results) for k in DRY_RUN_COUNTS}
        print(f"in all {len(configs)} settings: " + dry_run_text(summed))
    elif len(configs) > 1:
        path = write_summary(configs, results)
        print(f"\nsummary of {len(configs)} settings written to {path}")
    return 1 if failed else 0


DRY_RUN_COUNTS = ("comparisons", "requests", "cached", "to_ask", "identical_texts")


def dry_run_text(counts: dict[str, int]) -> str:
    """The dry run's account of what a run would ask (the counts of
    :func:`evals.judge.win_rate.comparison_counts`).

    >>> print(dry_run_text({"comparisons": 48, "requests": 47, "cached": 0, "to_ask": 47,
    ...                     "identical_texts": 2}))
    48 comparisons, 47 distinct judge requests (1 shows the same question and texts as another \
comparison and shares its answer), 0 cached, 47 to ask; 2 comparisons show two identical \
responses (asked too)
    """
    text = f"{counts['comparisons']} comparisons, {counts['requests']} distinct judge requests"
    repeats = counts["comparisons"] - counts["requests"]
    if repeats == 1:
        text += " (1 shows the same question and texts as another comparison and shares its answer)"
    elif repeats:
        text += (f" ({repeats} show the same question and texts as other comparisons and share "
                 "their answers)")
    text += f", {counts['cached']} cached, {counts['to_ask']} to ask"
    same = counts["identical_texts"]
    if same:
        text += (f"; {same} comparison{'s show' if same > 1 else ' shows'} two identical "
                 "responses (asked too)")
    return text


def report(config, result: dict) -> bool:
    """Print one setting's tables (or its dry-run counts); True if its ranking failed."""
    from evals.judge.win_rate import BT_COLUMNS, TARGET_COLUMNS
    from evals.tables import to_markdown

    counts = result["counts"]
    where = " / ".join(config.run.parts())
    if config.dry_run:
        pairs = f"{counts['pairs']} pair{'s' if counts['pairs'] > 1 else ''}"
        print(f"{where}: {counts['questions']} questions x {pairs}"
              + (" x 2 orders" if config.both_orders else "") + ": " + dry_run_text(counts))
        return False
    print(f"## {config.target} vs baselines, judge {config.judge}: {where}")
    print(to_markdown(result["target"], TARGET_COLUMNS))
    if result["ranking"] is not None:
        print("\n## Bradley-Terry ranking (a tie counts as half a win for each side)")
        print(to_markdown(result["ranking"], BT_COLUMNS))
        failed = counts.get("bt_failed_replicates", 0)
        if failed:
            print(f"warning: {failed} of {config.bootstrap} bootstrap fits did not converge; "
                  "the intervals and p_top use the others", file=sys.stderr)
    print(f"\nwritten to {config.out_dir}")
    if result["ranking_error"] is not None:
        print(f"error: Bradley-Terry ranking failed: {result['ranking_error']}; the win-rate "
              f"and pairwise tables are written to {config.out_dir} (a larger --bt_alpha, now "
              f"{config.bt_alpha:g}, regularises the fit)", file=sys.stderr)
        return True
    return False

