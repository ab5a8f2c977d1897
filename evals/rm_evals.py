"""Reward-model scores of every method's responses: several scorers and heads in one table.

Run from the repository root (one setting, every setting found under --output_dir, or the
public ARGS/PAD output files)::

    python evals/rm_evals.py --model_name Llama-3.1-8B-Instruct --eval_data HelpSteer_train \\
        --pref_name creative --device cuda            # ArmoRM head 6, the paper's Table 1
    python evals/rm_evals.py --scorer Ray2333/gpt2-large-helpful-reward_model \\
        --scorer RLHFlow/ArmoRM-Llama3-8B-v0.1:beavertails-is_safe \\
        --scorer mohameddhiab/humor-no-humor:humor
    python evals/rm_evals.py --input_file vanilla=psoups_0.jsonl --input_file pad=psoups_1.jsonl \\
        --input_format args_pad --scoring pad --scorer ...   # as PAD's measure_reward.py

Per setting ``{pref}/{model}/{dataset}`` it writes to ``{results_dir}/rm_score/...``:
``{rm}.scores.jsonl`` per scorer model (every response's whole output: all heads, or the
logits; append-only, resumable), ``{rm}_{label}_avg.csv`` / ``.md`` per scorer column, and
``{table}.csv`` / ``.md`` / ``.meta.json``: one row per method, one column per scorer and
head, plus the judge-free indicator columns. Over several settings it also writes
``{rm}_{label}_summary.csv`` / ``.md`` and ``{table}.*`` with one row per setting and method.
The library entry point is :func:`evaluate_rm`.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.errors import EvalError, EvalFailure, exit_code  # noqa: E402
from evals.jsonl_store import JsonlAppender, repair_and_read  # noqa: E402
from evals.public_scoring import SCORING_MODES, conversation_ids, raw_under_pad  # noqa: E402
from evals.responses import (  # noqa: E402
    RunKey,
    RunResponses,
    discover_runs,
    found_methods,
    load_run,
    run_dir,
    split_methods,
)
from evals.rm_table import (  # noqa: E402
    SETTING_COLUMNS,
    VERDICT_COLUMNS,
    Column,
    table_columns,
    write_outputs,
)
from evals.scorers import ScorerSpec, ScorerSpecError, parse_scorer  # noqa: E402
from evals.scoring_inputs import (  # noqa: E402
    PROMPT_MODES,
    load_args_pad_run,
    parse_input_file,
    resolve_prompt_mode,
)
from evals.tables import to_markdown  # noqa: E402
from evals.threads import NUM_THREADS_HELP, set_threads  # noqa: E402

ARMORM_DEFAULT = "RLHFlow/ArmoRM-Llama3-8B-v0.1"
INPUT_FORMATS = ("responses", "args_pad")


@dataclass(frozen=True)
class RmEvalConfig:
    """Validated options (see ``--help``); ``None`` filters mean every setting found.

    ``scorers`` are the ``--scorer`` specs; ``rm_name``/``rm_dimension`` (the older flags)
    add one more scorer, and with no scorer at all ArmoRM head 6 is the one.
    """

    output_dir: Path = Path("responses")
    results_dir: Path = Path("results")
    methods: tuple[str, ...] | None = None  # None: every method found in each setting
    prefs: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    datasets: tuple[str, ...] | None = None
    scorers: tuple[ScorerSpec, ...] = ()
    rm_name: str | None = None
    trust_remote_code: bool = False
    rm_dimension: int | str | None = None
    scorer_prompt: str = "auto"
    scoring: str = "project"  # or "args"/"pad": the public codes' measure_reward.py
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    max_length: int | None = None
    strict_length: bool = False
    indicators: bool = True
    length_tokenizer: str = "auto"
    max_new_tokens: int | None = None
    input_files: tuple[tuple[str, Path], ...] = ()
    input_name: str = "args_pad"
    table_name: str = "rm_table"
    progress: bool = True
    specs: tuple[ScorerSpec, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise EvalError(f"--batch_size must be >= 1, got {self.batch_size}")
        if isinstance(self.rm_dimension, int) and self.rm_dimension < 0:
            raise ScorerSpecError(
                f"--rm_dimension must be >= 0 or 'score', got {self.rm_dimension}")
        if self.scorer_prompt not in PROMPT_MODES:
            raise ScorerSpecError(f"--scorer_prompt {self.scorer_prompt!r}: choose one of "
                                  f"{', '.join(PROMPT_MODES)}")
        if self.scoring not in SCORING_MODES:
            raise ScorerSpecError(f"--scoring {self.scoring!r}: choose one of "
                                  f"{', '.join(SCORING_MODES)}")
        if self.scoring != "project" and not self.input_files:
            raise ScorerSpecError(f"--scoring {self.scoring} scores the public codes' output "
                                  "files as their measure_reward.py does: give them with "
                                  "--input_file")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise EvalError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.table_name):
            raise EvalError(f"--table_name {self.table_name!r}: letters, digits, . _ - only")
        clash = sorted(set(self.methods or ()) & {*SETTING_COLUMNS, *VERDICT_COLUMNS})
        if clash and not self.input_files:
            raise EvalError(f"method name(s) {', '.join(clash)} clash with a summary column")
        legacy = []
        if self.rm_name is not None or self.rm_dimension is not None or not self.scorers:
            head = None if self.rm_dimension is None else str(self.rm_dimension)
            legacy = [ScorerSpec(self.rm_name or ARMORM_DEFAULT, head, legacy=True)]
        object.__setattr__(self, "specs", (*legacy, *self.scorers))

    @property
    def single_run(self) -> RunKey | None:
        """The one setting named by all three filters (or the input files), if so."""
        if self.input_files:
            return RunKey("external", "args_pad", self.input_name)
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
    """The settings to score: the one named, or every complete one found (with no
    ``--methods``, every one holding a method file)."""
    if config.single_run is not None:
        return [config.single_run]
    methods = None if config.methods is None else list(config.methods)
    runs, skipped = discover_runs(
        config.output_dir, methods, config.prefs, config.models, config.datasets
    )
    for note in skipped:
        print(f"warning: skipping incomplete setting {note}", file=sys.stderr)
    if not runs:
        wanted = "any method file" if methods is None else f"all of {', '.join(methods)}"
        raise EvalError(
            f"no setting under {config.output_dir} has {wanted}"
            + (f" (incomplete: {len(skipped)})" if skipped else "")
        )
    return runs


def load_inputs(config: RmEvalConfig) -> list[RunResponses]:
    """The responses to score: the project's response files, or the ARGS/PAD output files."""
    if config.input_files:
        return [load_args_pad_run(list(config.input_files), config.single_run)]
    loaded = []
    for run in select_runs(config):
        methods = config.methods or found_methods(run_dir(config.output_dir, run))
        if not config.methods:
            clash = sorted(set(methods) & {*SETTING_COLUMNS, *VERDICT_COLUMNS})
            if clash:
                raise EvalError(f"method name(s) {', '.join(clash)} clash with a summary "
                                "column; pass --methods without them")
        loaded.append(load_run(config.output_dir, run, list(methods)))
    return loaded


def _tokenize(rm, responses: RunResponses, config: RmEvalConfig, mode: str):
    rows, too_long = [], []
    for method in responses.methods:
        for item in responses.items:
            ids, skip_at = conversation_ids(rm, responses, method, item, config.scoring, mode)
            if len(ids) > rm.max_length or (skip_at is not None and len(ids) >= skip_at):
                too_long.append((method, item.index, len(ids)))
            else:
                rows.append((method, item.index, ids))
    if too_long:
        method, index, length = too_long[0]
        where = "/".join(responses.key.parts())
        limit = (f"the reward model's {rm.max_length} tokens" if config.scoring == "project"
                 else f"the reward model's {rm.max_length} tokens or {config.scoring.upper()}'s "
                 "limit")
        message = (
            f"{len(too_long)} conversation(s) in {where} exceed {limit} "
            f"({Path(rm.name).name}; e.g. {method} index {index}: {length} tokens)"
        )
        if config.strict_length:
            raise EvalError(f"{message}; nothing is truncated (drop --strict_length to skip them)")
        print(
            f"warning: {message}; skipped, and their questions are left out of every "
            "method's average for this scorer", file=sys.stderr,
        )
    return rows, {index for _, index, _ in too_long}


def score_run(rm, responses: RunResponses, config: RmEvalConfig, path: Path, mode: str):
    """Score the run's conversations not yet in ``path``; return ``(records, excluded)``.

    ``records[(method, index)]`` is the JSONL record (all heads); ``excluded`` are the
    question indices skipped as too long. ``mode`` is the resolved prompt mode.
    """
    from tqdm import tqdm

    from evals.reward_model import plan_batches, score_key, score_rows

    rows, excluded = _tokenize(rm, responses, config, mode)
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
        for batch in tqdm(batches, desc=f"{Path(rm.name).name} {label}", unit="batch",
                          disable=not config.progress, file=sys.stderr):
            try:
                outputs = score_rows(rm, [pending[k][1][2] for k in batch])
            except (ValueError, RuntimeError) as exc:
                raise EvalFailure(f"scoring {label} with {rm.name} failed: {exc}") from None
            records = []
            for k, output in zip(batch, outputs, strict=True):
                key, (method, index, ids) = pending[k]
                records.append({
                    "key": key, "rm": rm.name, "implementation": rm.implementation,
                    "dtype": rm.dtype, "input_format": rm.input_format, "prompt_mode": mode,
                    "scoring": config.scoring,
                    "run": list(responses.key.parts()), "method": method, "index": index,
                    "n_tokens": len(ids), **output,
                })
            appender.extend(records)  # durable before the next batch starts
            cached.update((r["key"], r) for r in records)
    records = {(m, i): cached[key] for key, (m, i, _) in zip(keys, rows, strict=True)}
    return records, excluded


def evaluate_rm(config: RmEvalConfig) -> dict:
    """Score every selected setting with every scorer and write the tables; returns what
    :func:`evals.rm_table.write_outputs` returns."""
    loaded = load_inputs(config)
    from evals.reward_model import check_fetchable

    for model_name in dict.fromkeys(spec.model for spec in config.specs):
        check_fetchable(model_name)
    from transformers.utils import logging as hf_logging  # after input checks: slow import

    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not config.progress:
        hf_logging.disable_progress_bar()  # transformers' own "Loading weights" bar
    try:
        return _evaluate_loaded(config, loaded)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


def _load_scorers(config: RmEvalConfig) -> tuple[dict, list[Column]]:
    """Every scorer model's tokenizer and config (weights wait), and the resolved columns;
    a spec naming no head fails here, before anything is scored."""
    from evals.reward_model import load_reward_model
    from evals.scorers import config_shape, resolve_head

    models: dict[str, object] = {}
    for spec in config.specs:
        if spec.model not in models:
            models[spec.model] = load_reward_model(spec.model, config.trust_remote_code,
                                                   config.device, config.dtype, config.max_length)
    columns = []
    for spec in config.specs:
        rm = models[spec.model]
        shape = config_shape(rm.config or {}, rm.implementation)
        head = resolve_head(spec, shape) if shape is not None else None
        columns.append(Column(spec, rm_slug(spec.model), raw_under_pad(head, config.scoring)))
    if all(c.head is not None for c in columns):
        table_columns(columns)  # the same column twice fails now rather than after scoring
    return models, columns


def _evaluate_loaded(config: RmEvalConfig, loaded: list[RunResponses]) -> dict:
    from evals.scorers import head_value, resolve_head, shape_of_record

    models, columns = _load_scorers(config)
    modes = {r.key: resolve_prompt_mode(config.scorer_prompt, [i.preference for i in r.items])
             for r in loaded}
    values: dict[tuple, dict] = {}  # (run key, column number) -> {method: {index: value}}
    skipped: dict[tuple, set[int]] = {}
    for model_name, rm in models.items():
        mine = [k for k, c in enumerate(columns) if c.spec.model == model_name]
        for responses in loaded:
            out_dir = config.results_dir / "rm_score" / Path(*responses.key.parts())
            path = out_dir / f"{rm_slug(model_name)}.scores.jsonl"
            records, excluded = score_run(rm, responses, config, path, modes[responses.key])
            if not records:
                raise EvalError(f"nothing to score in {'/'.join(responses.key.parts())} "
                                f"with {model_name}")
            for k in mine:
                if columns[k].head is None:  # remote code: its outputs show its shape
                    shape = shape_of_record(next(iter(records.values())))
                    head = resolve_head(columns[k].spec, shape)
                    columns[k] = Column(columns[k].spec, columns[k].slug,
                                        raw_under_pad(head, config.scoring))
                per_method = {m: {} for m in responses.methods}
                for (method, index), record in records.items():
                    per_method[method][index] = head_value(record, columns[k].head)
                values[(responses.key, k)] = per_method
                skipped[(responses.key, k)] = excluded
        if rm.model is not None:
            rm.model = None  # free the weights before the next scorer loads
    names = table_columns(columns)
    return write_outputs(config, loaded, columns, names, values, skipped, modes, models)


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
    data = parser.add_argument_group("responses (omit a filter to take every value found)")
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
    rm = parser.add_argument_group("scorers")
    rm.add_argument("--scorer", action="append", default=[], metavar="NAME_OR_PATH[:HEAD]",
                    help="a reward model or classifier (hub id or local directory) and its head: "
                         "ArmoRM head index or name or 'score'; a classifier's label name or "
                         "index (softmax probability) or logit:LABEL (raw logit); none for a "
                         "one-label reward model. Repeat for several columns")
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
    rm.add_argument("--num_threads", type=int, default=None, help=NUM_THREADS_HELP)
    rm.add_argument("--max_length", type=int, default=None,
                    help="context limit in tokens (none: each model's)")
    rm.add_argument("--strict_length", action="store_true",
                    help="fail on a too-long conversation instead of skipping it")
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
    return parser


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
        print(f"## {'/'.join(key.parts())}: "
              + ", ".join(f"{n} [{result['labels'][n]}]" for n in result["columns"]))
        for name, count in skipped[key].items():
            if count:
                print(f"({name}: {count} questions skipped as too long)")
        print(to_markdown(rows, header) + "\n")
    for name, found in result["settings"].items():
        print(f"## {name} [{result['labels'][name]}]: share of the {len(found['settings'])} "
              "settings where each method scores highest")
        print(to_markdown(found["share"], ["method", "best", "share"]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
