"""What each method does to the text, as one command: ``python evals/analysis.py SUBCOMMAND``.

- ``k-table``: Amulet's ratio k(T, alpha, lambda, eta) over the paper's sweeps, with regimes;
- ``sweep``: run (or read) a sweep of the mixture strength and plot judge-free indicators;
- ``identity``: agreement of Amulet, LA(k), transformers' CFG and the implicit PAD, greedy;
- ``table1``: the paper's Table 1 layout and win-tie-lose figure from rm_evals / gpt_evals
  outputs, beside the paper's numbers;
- ``report``: all of it in one folder (markdown, PNG figures, the JSON behind each).

Run from the repository root; ``--help`` after a subcommand lists its options.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from evals.errors import EvalError, exit_code
from evals.threads import NUM_THREADS_HELP

DEFAULT_DATA_DIR = str(Path(__file__).resolve().parents[2] / "data")
DEFAULT_RESULTS_DIR = "results"


def k_table_command(args) -> int:
    from evals.study.analysis_report import k_part

    k_part(Path(args.out))
    print((Path(args.out) / "k_table.md").read_text(encoding="utf-8"))
    print(f"written to {args.out}: k_table.json, k_table.md, k_ratio.png")
    return 0


def run_config(args):
    """The base RunConfig of a sweep (validated by RunConfig itself)."""
    from config import RunConfig

    return RunConfig(
        model_name=args.model_name, eval_data=args.eval_data, data_dir=args.data_dir,
        pref_name=args.pref_name, limit=args.limit, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, device=args.device, dtype=args.dtype,
        reinforce_ratio=args.reinforce_ratio, iteration_num=args.iteration_num,
        alpha=args.alpha, player_lambda=args.player_lambda, eta=args.eta,
        num_threads=args.threads,
    )


def sweep_command(args) -> int:
    from dataclasses import replace

    from evals.study import analysis_sweep
    from evals.study.analysis_report import write_json

    out = Path(args.out)
    axis = analysis_sweep.AXES[args.axis]
    if args.from_responses:
        roots = [Path(p) for p in args.from_responses]
    else:
        config = run_config(args)
        values = analysis_sweep.parse_values(args.values, axis)
        roots = analysis_sweep.run_sweep(config, axis, values, out)
        if not args.no_base:
            first_pref = config.pref_names[0] or config.pref_name
            base = replace(config, method="base", pref_name=first_pref,
                           output_dir=str(out / "responses" / "base"))
            from DecodingMethodsModels.pipeline.runner import run

            run(base)
            roots.append(out / "responses" / "base")
    points = analysis_sweep.find_points(roots)
    data = analysis_sweep.sweep_data(points, args.axis, args.tokenizer)
    write_json(out / "sweep.json", data)
    analysis_sweep.plot_sweep(data, out / "sweep_indicators.png")
    summary = analysis_sweep.markdown_summary(data)
    (out / "sweep.md").write_text(f"{data['label']}\n\n{data['equivalents']}\n\n{summary}\n",
                                  encoding="utf-8")
    print(summary)
    print(f"written to {out}: sweep.json, sweep.md, sweep_indicators.png")
    return 0


def identity_command(args) -> int:
    from evals.study.analysis_identity import identity_markdown, measure_identity
    from evals.study.analysis_report import write_json

    result = measure_identity(args)
    out = Path(args.out)
    write_json(out / "identity.json", result)
    text = identity_markdown(result)
    (out / "identity.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"written to {out}: identity.json, identity.md")
    return 0


def table1_command(args) -> int:
    from evals.jsonl_store import write_text_atomic
    from evals.study.analysis_report import table1_part
    from evals.study.analysis_table1 import check_table1_inputs

    results_dir = Path(args.results_dir)
    check_table1_inputs(results_dir, args.rm_name, args.rm_label)
    text = table1_part(Path(args.out), results_dir, args.rm_name, args.rm_label)
    write_text_atomic(Path(args.out) / "table1_report.md", text)
    print(text)
    print(f"written to {args.out}: table1_report.md")
    return 0


def report_command(args) -> int:
    from evals.study.analysis_report import write_report

    for flag, value in (("--results_dir", args.results_dir),
                        ("--responses_dir", args.responses_dir)):
        if value is not None and not Path(value).is_dir():
            raise EvalError(f"{flag} {value}: no such folder")
    results_dir = args.results_dir
    if results_dir is None and Path(DEFAULT_RESULTS_DIR).is_dir():
        results_dir = DEFAULT_RESULTS_DIR
    path = write_report(
        Path(args.out), [Path(s) for s in args.sweep],
        Path(results_dir) if results_dir is not None else None,
        Path(args.responses_dir) if args.responses_dir else None,
        Path(args.identity) if args.identity else None, args.side_by_side, args.settings,
        args.tokenizer,
    )
    print(f"wrote {path}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"want an integer >= 1, got {text!r}")
    return value


def _threads(text: str) -> int | None:
    """auto (None: main.py's policy) or a whole number >= 1."""
    return None if text == "auto" else _positive_int(text)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a comma list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"want integers >= 1, got {text!r}")
    return values


def _decoding_options(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("model and questions")
    what.add_argument("--model_name", default="SmolLM2-135M-Instruct",
                      help="embedded default, a local model directory, a .gguf file or a hub id")
    what.add_argument("--data_dir", default=os.environ.get("AMULET_DATA_DIR", DEFAULT_DATA_DIR),
                      help="where datasets live (env AMULET_DATA_DIR)")
    what.add_argument("--eval_data", default="demo", help="one dataset name in --data_dir")
    what.add_argument("--limit", type=int, default=8, help="the first N questions")
    what.add_argument("--max_new_tokens", type=int, default=64)
    what.add_argument("--batch_size", type=int, default=8)
    what.add_argument("--device", default="auto")
    what.add_argument("--dtype", default="auto")
    what.add_argument("--num_threads", "--threads", dest="threads", type=_threads,
                      default=None, metavar="auto|N", help=NUM_THREADS_HELP)
    amulet = parser.add_argument_group("Amulet (the settings not swept)")
    amulet.add_argument("--iteration_num", type=int, default=60, help="T")
    amulet.add_argument("--alpha", type=float, default=2.0)
    amulet.add_argument("--player_lambda", type=float, default=2.0)
    amulet.add_argument("--eta", type=float, default=10.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evals/analysis.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    k = commands.add_parser("k-table", help="k over the paper's sweeps", formatter_class=fmt)
    k.add_argument("--out", default="results/analysis")
    k.set_defaults(handler=k_table_command)

    sweep = commands.add_parser("sweep", help="indicators against the mixture strength",
                                formatter_class=fmt)
    sweep.add_argument("--out", default="results/analysis/sweep")
    sweep.add_argument("--axis", default="ratio", choices=("ratio", "T", "eta"),
                       help="ratio: LA's r; T or eta: Amulet's (its ratio k is the x axis)")
    sweep.add_argument("--values", default="0,1,2,4.65,8", help="comma list of the axis' values")
    sweep.add_argument("--pref_name", default="creative,verbose",
                       help="comma list: one line per preference")
    sweep.add_argument("--no_base", action="store_true", help="skip the base reference run")
    sweep.add_argument("--from_responses", nargs="+", default=None, metavar="DIR",
                       help="read existing response files (with sidecars) instead of running")
    sweep.add_argument("--tokenizer", default=None,
                       help="tokenizer for lengths in tokens (default: each run's model)")
    sweep.add_argument("--reinforce_ratio", type=float, default=2.0, help=argparse.SUPPRESS)
    _decoding_options(sweep)
    sweep.set_defaults(handler=sweep_command)

    ident = commands.add_parser("identity", help="Amulet == LA(k) == CFG == implicit PAD",
                                formatter_class=fmt)
    ident.add_argument("--out", default="results/analysis/identity")
    ident.add_argument("--pref_name", default="creative")
    ident.add_argument("--pad_top_k", type=_int_list, default=[10],
                       help="PAD's candidate count(s), comma list (PAD's configs use 10)")
    _decoding_options(ident)
    ident.set_defaults(handler=identity_command)

    table = commands.add_parser("table1", help="Table 1 and win-tie-lose from eval outputs",
                                formatter_class=fmt)
    table.add_argument("--results_dir", default="results")
    table.add_argument("--out", default="results/analysis/table1")
    table.add_argument("--rm_name", default="RLHFlow/ArmoRM-Llama3-8B-v0.1")
    table.add_argument("--rm_label", default="dim6",
                       help="the label in rm_evals' file names: dim6, score, logit0, ...")
    table.set_defaults(handler=table1_command)

    report = commands.add_parser("report", help="everything in one folder", formatter_class=fmt)
    report.add_argument("--out", default="results/analysis/report")
    report.add_argument("--sweep", nargs="*", default=[], metavar="DIR",
                        help="sweep folders (with sweep.json) or response directories")
    report.add_argument("--results_dir", default=None,
                        help=f"rm_evals / gpt_evals outputs (default: {DEFAULT_RESULTS_DIR} "
                             "when it exists)")
    report.add_argument("--responses_dir", default=None,
                        help="main.py's --output_dir, for the side-by-side view of methods")
    report.add_argument("--identity", default=None, help="identity.json of the identity command")
    report.add_argument("--side_by_side", type=int, default=3, help="questions shown")
    report.add_argument("--settings", type=int, default=2,
                        help="settings of --responses_dir shown side by side")
    report.add_argument("--tokenizer", default=None)
    report.set_defaults(handler=report_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: an input error is one stderr line and exit code 2, a failure while
    running one line and exit code 1."""
    from DecodingMethodsModels.errors import UserError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (EvalError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc) if isinstance(exc, EvalError) else 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are saved; rerun the same command to resume",
              file=sys.stderr)
        return 130

