"""The command line of reward-model scoring (``python evals/rm_evals.py``): flags to an
:class:`~evals.scoring.rm_run.RmEvalConfig`, then :func:`~evals.scoring.rm_run.evaluate_rm` and
the tables printed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evals.errors import EvalError, exit_code
from evals.scoring.public_scoring import SCORING_MODES
from evals.scoring.responses import split_methods
from evals.scoring.rm_run import ARMORM_DEFAULT, INPUT_FORMATS, RmEvalConfig, evaluate_rm
from evals.scoring.scorers import ScorerSpecError, parse_scorer
from evals.scoring.scoring_inputs import PROMPT_MODES, parse_input_file
from evals.tables import to_markdown
from evals.threads import NUM_THREADS_HELP, THREADS_TYPE, set_threads


def _dimension(text: str | None) -> int | str | None:
    if text is None or text == "score":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a head index or 'score', got {text!r}") from None


def _names(text: str | None, flag: str) -> tuple[str, ...] | None:
    return None if text is None else tuple(split_methods(text, flag))


def build_parser() -> argparse.ArgumentParser:
    """The command line; with no scorer, the paper's (ArmoRM, head 6)."""
    parser = argparse.ArgumentParser(
        description="Reward-model scores and judge-free indicators per method, in one table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _response_flags(parser.add_argument_group(
        "responses (omit a filter to take every value found)"))
    _scorer_flags(parser.add_argument_group("scorers"))
    _indicator_and_output_flags(parser)
    return parser


def _response_flags(data) -> None:
    data.add_argument("--output_dir", default="responses/", help="root of main.py's outputs")
    data.add_argument("--pref_name", default=None, help="preference name(s), comma separated")
    data.add_argument("--model_name", default=None, help="model short name(s), comma separated")
    data.add_argument("--eval_data", default=None, help="dataset name(s), comma separated")
    data.add_argument("--methods", default=None,
                      help="comma list (none: every method found in each setting)")
    data.add_argument("--input_file", action="append", default=[], metavar="[NAME=]PATH",
                      help="an ARGS/PAD output file (a JSON list of {prompt, result, ...}), one "
                           "per method, named NAME or by the file's stem; repeat for several")
    data.add_argument("--input_format", choices=INPUT_FORMATS, default=None,
                      help="responses (the project's files) or args_pad (--input_file)")
    data.add_argument("--input_name", default="args_pad",
                      help="the results directory name for --input_file runs")

def _scorer_flags(rm) -> None:
    rm.add_argument("--scorer", action="append", default=[], metavar="NAME_OR_PATH[:HEAD]",
                    help="a reward model or classifier (hub id or local directory) and its head: "
                         "ArmoRM head index or name or 'score'; a classifier's label name or "
                         "index (softmax probability) or logit:LABEL (raw logit); no head for a "
                         "one-label reward model. Repeat for several columns. Offline: 'none' "
                         "(the indicators alone, no model) or 'loglik' (the embedded model's "
                         "mean log-probability of the response: not a reward model)")
    rm.add_argument("--rm_name", default=None,
                    help="older form of one --scorer (without any scorer: "
                         f"{ARMORM_DEFAULT})")
    rm.add_argument("--rm_dimension", type=_dimension, default=None,
                    help="head of --rm_name: ArmoRM head index (none: 6) or 'score'; for "
                         "other models the raw logit index (none: 0)")
    rm.add_argument("--scorer_prompt", choices=PROMPT_MODES, default="auto",
                    help="what the scorer sees as the user turn: the question, or question + "
                         "' ' + preference (Amulet); auto: question for PAD's principles, "
                         "question + preference for preference sentences")
    rm.add_argument("--scoring", choices=SCORING_MODES, default="project",
                    help="project: the response cut at its end of turn, in the scorer's "
                         "conversation; args or pad (--input_file only): the text the public "
                         "code's measure_reward.py scores, with its length rules")
    rm.add_argument("--trust_remote_code", action="store_true",
                    help="allow the model's own code (ArmoRM runs natively without it)")
    rm.add_argument("--batch_size", type=int, default=8, help="conversations per forward pass")
    rm.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    rm.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), ...")
    rm.add_argument("--num_threads", type=THREADS_TYPE, default=None, metavar="auto|N",
                    help=NUM_THREADS_HELP)
    rm.add_argument("--max_length", type=int, default=None,
                    help="context limit in tokens (none: each model's)")
    rm.add_argument("--strict_length", action="store_true",
                    help="fail on a too-long conversation instead of skipping it")

def _indicator_and_output_flags(parser: argparse.ArgumentParser) -> None:
    ind = parser.add_argument_group("judge-free indicators (no model)")
    ind.add_argument("--no_indicators", action="store_true", help="leave the columns out")
    ind.add_argument("--length_tokenizer", default="auto",
                     help="tokenizer for lengths in tokens: a hub id, directory, GGUF file or "
                          "the embedded model's name, 'none', or auto (the generating model of "
                          "the run's .meta.json when it needs no hub)")
    ind.add_argument("--max_new_tokens", type=int, default=None,
                     help="token budget for the share hitting it (none: the run's "
                          ".meta.json)")
    out = parser.add_argument_group("outputs")
    out.add_argument("--results_dir", default="results/", help="score files and tables")
    out.add_argument("--table_name", default="rm_table", help="file name of the tables")
    out.add_argument("--no_progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> RmEvalConfig:
    """The validated configuration of parsed command-line arguments."""
    fmt = args.input_format or ("args_pad" if args.input_file else "responses")
    if (fmt == "args_pad") != bool(args.input_file):
        raise ScorerSpecError("--input_format args_pad needs --input_file, and --input_file "
                              "needs --input_format args_pad")
    return RmEvalConfig(
        output_dir=Path(args.output_dir), results_dir=Path(args.results_dir),
        methods=_names(args.methods, "--methods"),
        prefs=_names(args.pref_name, "--pref_name"),
        models=_names(args.model_name, "--model_name"),
        datasets=_names(args.eval_data, "--eval_data"),
        scorers=tuple(parse_scorer(s) for s in args.scorer),
        rm_name=args.rm_name, trust_remote_code=args.trust_remote_code,
        rm_dimension=args.rm_dimension, scorer_prompt=args.scorer_prompt,
        scoring=args.scoring,
        batch_size=args.batch_size, device=args.device, dtype=args.dtype,
        max_length=args.max_length, strict_length=args.strict_length,
        indicators=not args.no_indicators, length_tokenizer=args.length_tokenizer,
        max_new_tokens=args.max_new_tokens,
        input_files=tuple(parse_input_file(s) for s in args.input_file),
        input_name=args.input_name, table_name=args.table_name, progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: a usage or input error is one stderr line and exit code 2, a failure
    while scoring one line and exit code 1."""
    args = build_parser().parse_args(argv)
    try:
        set_threads(args.num_threads)
        config = config_from_args(args)
        result = evaluate_rm(config)
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("interrupted: finished scores are saved; rerun to resume", file=sys.stderr)
        return 130
    skipped = {key: counts for key, _, counts in result["runs"]}
    for key, rows, header in result["tables"]:
        if key is None:
            continue  # the grid's rows are the runs' rows again
        scorers = ", ".join(f"{n} [{result['labels'][n]}]" for n in result["columns"])
        print(f"## {'/'.join(key.parts())}: {scorers or 'judge-free indicators only'}")
        for name, count in skipped[key].items():
            if count:
                print(f"({name}: {count} questions skipped as too long)")
        print(to_markdown(rows, header) + "\n")
    for name, found in result["settings"].items():
        print(f"## {name} [{result['labels'][name]}]: share of the {len(found['settings'])} "
              "settings where each method scores highest")
        print(to_markdown(found["share"], ["method", "best", "share"]) + "\n")
    return 0

