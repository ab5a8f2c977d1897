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
The library entry point is :func:`evaluate_rm`; the command line is
:mod:`evals.scoring.rm_cli` (run as ``python evals/rm_evals.py``).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from evals.errors import EvalError, EvalFailure
from evals.jsonl_store import JsonlAppender, repair_and_read
from evals.scoring.loglik_scorer import LOGLIK
from evals.scoring.public_scoring import SCORING_MODES
from evals.scoring.responses import (
    RunKey,
    RunResponses,
    discover_runs,
    found_methods,
    load_run,
    run_dir,
)
from evals.scoring.rm_report import left_out
from evals.scoring.rm_table import (
    SETTING_COLUMNS,
    VERDICT_COLUMNS,
    Column,
    table_columns,
    write_outputs,
)
from evals.scoring.scored_ids import conversation_ids
from evals.scoring.scorers import ScorerSpec, ScorerSpecError, raw_under_pad
from evals.scoring.scoring_inputs import (
    PROMPT_MODES,
    load_args_pad_run,
    resolve_prompt_mode,
)

ARMORM_DEFAULT = "RLHFlow/ArmoRM-Llama3-8B-v0.1"
NO_SCORER = "none"  # --scorer none: the judge-free indicators alone, no model
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
        if any(spec.model == NO_SCORER for spec in self.scorers):
            if len(self.scorers) > 1 or self.scorers[0].head is not None or self.rm_name \
                    or self.rm_dimension is not None:
                raise ScorerSpecError(f"--scorer {NO_SCORER} (the indicators alone) takes no "
                                      "head and no other scorer, --rm_name or --rm_dimension")
            if not self.indicators:
                raise EvalError(f"--scorer {NO_SCORER} with --no_indicators leaves nothing to "
                                "compute")
            object.__setattr__(self, "specs", ())
            return
        if self.scoring != "project" and any(s.model == LOGLIK for s in self.scorers):
            raise ScorerSpecError(f"--scorer {LOGLIK} reads the project's conversations; "
                                  f"--scoring {self.scoring} builds a public code's inputs")
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
        loaded.append(load_run(config.output_dir, run, list(methods),
                               skip_partial=not config.methods))
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
        per_file = config.scoring != "project"
        where_out = ("its own method's average (as the public script averages each file)"
                     if per_file else "every method's average")
        print(f"warning: {message}; skipped, and left out of {where_out} for this scorer",
              file=sys.stderr)
    excluded = left_out([(m, i) for m, i, _ in too_long], responses.methods,
                        per_file=config.scoring != "project")
    return rows, excluded


def score_run(rm, responses: RunResponses, config: RmEvalConfig, path: Path, mode: str):
    """Score the run's conversations not yet in ``path``; return ``(records, excluded)``.

    ``records[(method, index)]`` is the JSONL record (all heads); ``excluded[method]`` the
    question indices left out of that method's average because a response was too long
    (:func:`evals.scoring.rm_report.left_out`: its own under ``--scoring args|pad``, any
    method's under ``project``). ``mode`` is the resolved prompt mode.
    """
    from tqdm import tqdm

    from evals.scoring.reward_model import plan_batches, score_key, score_rows

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
    :func:`evals.scoring.rm_table.write_outputs` returns."""
    loaded = load_inputs(config)
    from evals.scoring.reward_model import check_fetchable

    for model_name in dict.fromkeys(spec.model for spec in config.specs):
        if model_name != LOGLIK:  # the embedded model: nothing to fetch
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
    from evals.scoring.loglik_scorer import load_loglik_scorer
    from evals.scoring.reward_model import load_reward_model
    from evals.scoring.scorers import config_shape, resolve_head

    models: dict[str, object] = {}
    for spec in config.specs:
        if spec.model in models:
            continue
        if spec.model == LOGLIK:
            models[spec.model] = load_loglik_scorer(config.device, config.dtype,
                                                    config.max_length)
        else:
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
    from evals.scoring.scorers import head_value, resolve_head, shape_of_record

    models, columns = _load_scorers(config)
    modes = {r.key: resolve_prompt_mode(config.scorer_prompt, [i.preference for i in r.items])
             for r in loaded}
    values: dict[tuple, dict] = {}  # (run key, column number) -> {method: {index: value}}
    skipped: dict[tuple, dict[str, set[int]]] = {}  # (run key, column) -> per method
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
