"""Reward-model scores of every method's responses (ArmoRM by default, paper Table 1).

Run from the repository root (one setting, or every setting found under --output_dir)::

    python evals/rm_evals.py --model_name Llama-3.1-8B-Instruct --eval_data HelpSteer_train \\
        --pref_name creative --device cuda
    python evals/rm_evals.py            # the whole grid: share of settings each method wins

Per setting ``{pref}/{model}/{dataset}`` it writes to ``{results_dir}/rm_score/...``:
``{rm}.scores.jsonl`` (every response's scores: all 19 heads and the gated score for
ArmoRM, or the logits; append-only, resumable) and ``{rm}_{dim}_avg.csv`` / ``.md``. Over
several settings it also writes ``{results_dir}/rm_score/{rm}_{dim}_summary.csv`` / ``.md``.
The library entry point is :func:`evaluate_rm`.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.errors import EvalError, EvalFailure, exit_code  # noqa: E402
from evals.jsonl_store import JsonlAppender, repair_and_read, write_text_atomic  # noqa: E402
from evals.responses import (  # noqa: E402
    DEFAULT_METHODS,
    RunKey,
    RunResponses,
    discover_runs,
    load_run,
    split_methods,
)
from evals.rm_report import best_methods, best_share, method_means  # noqa: E402
from evals.tables import to_csv, to_markdown  # noqa: E402

AVG_COLUMNS = ["method", "mean", "std", "n"]
# The summary's columns besides one per method; a method may not share a name with them.
SETTING_COLUMNS = ("preference", "model", "dataset")
VERDICT_COLUMNS = ("best", "skipped")


@dataclass(frozen=True)
class RmEvalConfig:
    """Validated options (see ``--help``); ``None`` filters mean every setting found."""

    output_dir: Path = Path("responses")
    results_dir: Path = Path("results")
    methods: tuple[str, ...] = DEFAULT_METHODS
    prefs: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    datasets: tuple[str, ...] | None = None
    rm_name: str = "RLHFlow/ArmoRM-Llama3-8B-v0.1"
    trust_remote_code: bool = False
    rm_dimension: int | str | None = None
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    max_length: int | None = None
    strict_length: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise EvalError(f"--batch_size must be >= 1, got {self.batch_size}")
        if isinstance(self.rm_dimension, int) and self.rm_dimension < 0:
            raise EvalError(f"--rm_dimension must be >= 0 or 'score', got {self.rm_dimension}")
        clash = sorted(set(self.methods) & {*SETTING_COLUMNS, *VERDICT_COLUMNS})
        if clash:
            raise EvalError(f"method name(s) {', '.join(clash)} clash with a summary column")

    @property
    def single_run(self) -> RunKey | None:
        """The one setting named by all three filters, if that is what was asked."""
        named = (self.prefs, self.models, self.datasets)
        if all(f is not None and len(f) == 1 for f in named):
            return RunKey(self.prefs[0], self.models[0], self.datasets[0])
        return None


def rm_slug(name: str) -> str:
    """File-name-safe model name: a local directory's name, or ``owner__repo`` for a hub id.

    >>> rm_slug("RLHFlow/ArmoRM-Llama3-8B-v0.1")
    'RLHFlow__ArmoRM-Llama3-8B-v0.1'
    """
    path = Path(name)
    if path.is_dir():
        return re.sub(r"[^A-Za-z0-9._-]+", "_", path.resolve().name)
    return re.sub(r"[^A-Za-z0-9._-]+", "__", name.strip("/"))


def select_runs(config: RmEvalConfig) -> list[RunKey]:
    """The settings to score: the one named, or every complete one found."""
    if config.single_run is not None:
        return [config.single_run]
    runs, skipped = discover_runs(
        config.output_dir, list(config.methods), config.prefs, config.models, config.datasets
    )
    for note in skipped:
        print(f"warning: skipping incomplete setting {note}", file=sys.stderr)
    if not runs:
        raise EvalError(
            f"no setting under {config.output_dir} has all of {', '.join(config.methods)}"
            + (f" (incomplete: {len(skipped)})" if skipped else "")
        )
    return runs


def _tokenize(rm, responses: RunResponses, config: RmEvalConfig):
    from evals.reward_model import conversation_ids

    rows, too_long = [], []
    for method in responses.methods:
        for item in responses.items:
            ids = conversation_ids(
                rm.tokenizer, item.question, item.preference, responses.texts[method][item.index]
            )
            if len(ids) > rm.max_length:
                too_long.append((method, item.index, len(ids)))
            else:
                rows.append((method, item.index, ids))
    if too_long:
        method, index, length = too_long[0]
        where = "/".join(responses.key.parts())
        message = (
            f"{len(too_long)} conversation(s) in {where} exceed the reward model's "
            f"{rm.max_length} tokens (e.g. {method} index {index}: {length} tokens)"
        )
        if config.strict_length:
            raise EvalError(f"{message}; nothing is truncated (drop --strict_length to skip them)")
        print(
            f"warning: {message}; skipped, and their questions are left out of every "
            "method's average", file=sys.stderr,
        )
    return rows, {index for _, index, _ in too_long}


def score_run(rm, responses: RunResponses, config: RmEvalConfig, path: Path):
    """Score the run's conversations not yet in ``path``; return ``(records, excluded)``.

    ``records[(method, index)]`` is the JSONL record (all heads); ``excluded`` are the
    question indices skipped as too long.
    """
    from tqdm import tqdm

    from evals.reward_model import plan_batches, score_key, score_rows

    rows, excluded = _tokenize(rm, responses, config)
    cached = {r["key"]: r for r in repair_and_read(path) if "key" in r}
    keys = [score_key(rm, ids) for _, _, ids in rows]
    todo: dict[str, tuple] = {}
    for key, (method, index, ids) in zip(keys, rows, strict=True):
        if key not in cached:
            todo.setdefault(key, (method, index, ids))
    pending = list(todo.items())
    batches = plan_batches([ids for _, (_, _, ids) in pending], rm.pad_id, config.batch_size)
    label = "/".join(responses.key.parts())
    with JsonlAppender(path) as appender:
        for batch in tqdm(batches, desc=f"RM {label}", unit="batch", disable=not config.progress,
                          file=sys.stderr):
            try:
                outputs = score_rows(rm, [pending[k][1][2] for k in batch])
            except (ValueError, RuntimeError) as exc:
                raise EvalFailure(f"scoring {label} with {rm.name} failed: {exc}") from None
            records = []
            for k, output in zip(batch, outputs, strict=True):
                key, (method, index, ids) = pending[k]
                records.append({
                    "key": key, "rm": rm.name, "implementation": rm.implementation,
                    "dtype": rm.dtype, "run": list(responses.key.parts()), "method": method,
                    "index": index, "n_tokens": len(ids), **output,
                })
            appender.extend(records)  # durable before the next batch starts
            cached.update((r["key"], r) for r in records)
    records = {(m, i): cached[key] for key, (m, i, _) in zip(keys, rows, strict=True)}
    return records, excluded


def evaluate_rm(config: RmEvalConfig) -> dict:
    """Score every selected setting and write the tables; returns them as row lists."""
    runs = select_runs(config)
    loaded = [load_run(config.output_dir, run, list(config.methods)) for run in runs]
    from evals.reward_model import check_fetchable

    check_fetchable(config.rm_name)
    from transformers.utils import logging as hf_logging  # after input checks: slow import

    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not config.progress:
        hf_logging.disable_progress_bar()  # transformers' own "Loading weights" bar
    try:
        return _evaluate_loaded(config, loaded)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


def _evaluate_loaded(config: RmEvalConfig, loaded: list[RunResponses]) -> dict:
    from evals.reward_model import dimension_label, load_reward_model, value_of

    rm = load_reward_model(
        config.rm_name, config.trust_remote_code, config.device, config.dtype, config.max_length
    )
    slug = rm_slug(config.rm_name)
    per_run, label = [], None
    for responses in loaded:
        out_dir = config.results_dir / "rm_score" / Path(*responses.key.parts())
        records, excluded = score_run(rm, responses, config, out_dir / f"{slug}.scores.jsonl")
        if not records:
            raise EvalError(f"nothing to score in {'/'.join(responses.key.parts())}")
        some = next(iter(records.values()))
        label = dimension_label(some, config.rm_dimension)
        values = {m: {} for m in responses.methods}
        for (method, index), record in records.items():
            values[method][index] = value_of(record, config.rm_dimension)
        rows = method_means(values, excluded)
        write_text_atomic(out_dir / f"{slug}_{label}_avg.csv", to_csv(rows, AVG_COLUMNS))
        write_text_atomic(out_dir / f"{slug}_{label}_avg.md", to_markdown(rows, AVG_COLUMNS) + "\n")
        per_run.append((responses.key, rows, len(excluded)))
    summary = _summary(per_run, list(config.methods))
    if config.single_run is None:
        base = config.results_dir / "rm_score" / f"{slug}_{label}"
        columns = summary_columns(config.methods)
        write_text_atomic(base.with_name(base.name + "_summary.csv"),
                          to_csv(summary["settings"], columns))
        write_text_atomic(base.with_name(base.name + "_summary.md"), _summary_markdown(
            summary, columns) + "\n")
    return {"label": label, "runs": per_run, **summary}


def summary_columns(methods: tuple[str, ...]) -> list[str]:
    """Columns of the summary table: the setting, each method's mean, the best, the skipped.

    >>> summary_columns(("base", "pref"))
    ['preference', 'model', 'dataset', 'base', 'pref', 'best', 'skipped']
    """
    return [*SETTING_COLUMNS, *methods, *VERDICT_COLUMNS]


def _summary(per_run, methods: list[str]) -> dict:
    settings = []
    for key, rows, skipped in per_run:
        means = {r["method"]: r["mean"] for r in rows}
        settings.append({
            "preference": key.pref, "model": key.model, "dataset": key.dataset, **means,
            "best": "+".join(best_methods(means)), "skipped": skipped,
        })
    share = best_share([{m: s[m] for m in methods} for s in settings], methods)
    return {"settings": settings, "share": share}


def _summary_markdown(summary: dict, columns: list[str]) -> str:
    return (
        to_markdown(summary["settings"], columns)
        + f"\n\nShare of the {len(summary['settings'])} settings where each method scores "
        "highest (a tie for the top splits the credit):\n\n"
        + to_markdown(summary["share"], ["method", "best", "share"])
    )


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
    """The command line; defaults follow the paper (ArmoRM, head 6)."""
    parser = argparse.ArgumentParser(
        description="Reward-model scores per method (Amulet, ICLR 2025, Table 1).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("responses (omit a filter to take every value found)")
    data.add_argument("--output_dir", default="responses/", help="root of main.py's outputs")
    data.add_argument("--pref_name", default=None, help="preference name(s), comma separated")
    data.add_argument("--model_name", default=None, help="model short name(s), comma separated")
    data.add_argument("--eval_data", default=None, help="dataset name(s), comma separated")
    data.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma list")
    rm = parser.add_argument_group("reward model")
    rm.add_argument("--rm_name", default="RLHFlow/ArmoRM-Llama3-8B-v0.1",
                    help="hub id or local directory")
    rm.add_argument("--trust_remote_code", action="store_true",
                    help="allow the model's own code (ArmoRM runs natively without it)")
    rm.add_argument("--rm_dimension", type=_dimension, default=None,
                    help="ArmoRM head index (default 6: instruction following) or 'score' "
                         "for the gated score; for other models the logit index (default 0)")
    rm.add_argument("--batch_size", type=int, default=8, help="conversations per forward pass")
    rm.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    rm.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), ...")
    rm.add_argument("--num_threads", type=int, default=None,
                    help="torch CPU threads (None: torch's choice); 1 is often much faster on "
                    "a shared or busy machine")
    rm.add_argument("--max_length", type=int, default=None,
                    help="context limit in tokens (None: the model's)")
    rm.add_argument("--strict_length", action="store_true",
                    help="fail on a too-long conversation instead of skipping it")
    out = parser.add_argument_group("outputs")
    out.add_argument("--results_dir", default="results/", help="score files and tables")
    out.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def set_threads(count: int | None) -> None:
    """torch.set_num_threads(count), unless None (torch's default)."""
    if count is None:
        return
    if count < 1:
        raise EvalError(f"--num_threads must be >= 1, got {count}")
    import torch

    torch.set_num_threads(count)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; user errors become one stderr line and exit code 2, failures while
    scoring exit code 1."""
    args = build_parser().parse_args(argv)
    try:
        set_threads(args.num_threads)
        config = RmEvalConfig(
            output_dir=Path(args.output_dir), results_dir=Path(args.results_dir),
            methods=tuple(split_methods(args.methods)),
            prefs=_names(args.pref_name, "--pref_name"),
            models=_names(args.model_name, "--model_name"),
            datasets=_names(args.eval_data, "--eval_data"),
            rm_name=args.rm_name, trust_remote_code=args.trust_remote_code,
            rm_dimension=args.rm_dimension, batch_size=args.batch_size, device=args.device,
            dtype=args.dtype, max_length=args.max_length, strict_length=args.strict_length,
            progress=not args.no_progress,
        )
        result = evaluate_rm(config)
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("interrupted: finished scores are saved; rerun to resume", file=sys.stderr)
        return 130
    for key, rows, skipped in result["runs"]:
        note = f" ({skipped} questions skipped as too long)" if skipped else ""
        print(f"## {config.rm_name} [{result['label']}]: {'/'.join(key.parts())}{note}")
        print(to_markdown(rows, AVG_COLUMNS) + "\n")
    if config.single_run is None:
        print(_summary_markdown(result, summary_columns(config.methods)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
