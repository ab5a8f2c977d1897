"""GPT-4o pairwise win rates of the target method against each baseline (paper, section 5).

Run from the repository root::

    python evals/gpt_evals.py --model_name Llama-3.1-8B-Instruct \\
        --eval_data personal_preference_eval_preference_data --pref_name creative

The API key comes from the environment only (see ``openai_key_info.py``). Every judgment
is cached in ``--cache_path`` as it arrives: a rerun or a resumed crash asks nothing twice.
With ``--all_pairs`` every pair of methods is judged and ranked by Bradley-Terry (choix),
a tie counting as half a win for each side. The library entry point is
:func:`evals.win_rate.evaluate`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.errors import EvalError, exit_code  # noqa: E402
from evals.judge import PAPER_PRESET, JudgePreset  # noqa: E402
from evals.judge_client import RetryPolicy  # noqa: E402
from evals.responses import DEFAULT_METHODS, RunKey, split_methods  # noqa: E402
from openai_key_info import redact  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command line; defaults are the paper's judge settings."""
    parser = argparse.ArgumentParser(
        description="Pairwise GPT judge win rates (Amulet, ICLR 2025, section 5).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("responses")
    data.add_argument("--output_dir", default="responses/", help="root of main.py's outputs")
    data.add_argument("--model_name", required=True, help="model short name directory")
    data.add_argument("--eval_data", required=True, help="dataset name directory")
    data.add_argument("--pref_name", required=True, help="preference name directory")
    data.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma list")
    data.add_argument("--target", default="amulet", help="method compared to every other")
    data.add_argument("--all_pairs", action="store_true",
                      help="judge every pair and rank by Bradley-Terry")
    data.add_argument("--max_questions", type=int, default=None,
                      help="only the first N questions (by index), e.g. to bound cost")

    judge = parser.add_argument_group("judge")
    judge.add_argument("--judge_model", default=PAPER_PRESET.model,
                       help="model (or Azure deployment) name")
    judge.add_argument("--judge_base_url", default=None,
                       help="OpenAI-compatible endpoint; default $OPENAI_BASE_URL or OpenAI")
    judge.add_argument("--judge_temperature", type=float, default=PAPER_PRESET.temperature,
                       help="the judge's sampling temperature")
    judge.add_argument("--judge_top_p", type=float, default=PAPER_PRESET.top_p,
                       help="the judge's nucleus top_p")
    judge.add_argument("--judge_max_tokens", type=int, default=PAPER_PRESET.max_tokens,
                       help="the judge answers in one word")
    judge.add_argument("--judge_seed", type=int, default=PAPER_PRESET.seed,
                       help="sent with every request")
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

    out = parser.add_argument_group("outputs")
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
    return parser


def config_from_args(args: argparse.Namespace):
    """Turn parsed arguments into a validated :class:`evals.win_rate.GptEvalConfig`."""
    from evals.win_rate import GptEvalConfig

    preset = JudgePreset(
        model=args.judge_model, temperature=args.judge_temperature, top_p=args.judge_top_p,
        max_tokens=args.judge_max_tokens, seed=args.judge_seed,
    )
    retry = RetryPolicy(
        max_retries=args.max_retries, max_invalid_retries=args.max_invalid_retries,
        base_delay=args.retry_base_delay, max_delay=args.retry_max_delay,
    )
    return GptEvalConfig(
        run=RunKey(args.pref_name, args.model_name, args.eval_data),
        output_dir=Path(args.output_dir), results_dir=Path(args.results_dir),
        cache_path=Path(args.cache_path or Path(args.results_dir) / "judge_cache.jsonl"),
        methods=tuple(split_methods(args.methods)),
        target=args.target, all_pairs=args.all_pairs, preset=preset,
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
        config = config_from_args(args)
        from evals.tables import to_markdown
        from evals.win_rate import BT_COLUMNS, TARGET_COLUMNS, evaluate

        result = evaluate(config)
    except EvalError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("interrupted: finished judgments are cached; rerun to resume", file=sys.stderr)
        return 130
    counts = result["counts"]
    if config.dry_run:
        print(f"{counts['comparisons']} comparisons, {counts['to_ask']} not cached yet")
        return 0
    print(f"## {config.target} vs baselines: {' / '.join(config.run.parts())}")
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
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
