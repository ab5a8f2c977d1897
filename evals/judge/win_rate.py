"""The GPT win-rate evaluation as a library function: comparisons, cache, judge, tables, files.

``evaluate(config)`` is the Python API behind ``evals/gpt_evals.py``. Per run
``{pref}/{model}/{dataset}`` it writes to ``{results_dir}/gpt_win_rate/{pref}/{model}/{dataset}/``
(a local judge: ``{results_dir}/local_judge_win_rate/{judge}/{pref}/{model}/{dataset}/``, the
same files without the ``gpt_`` prefix; a protocol other than the paper's adds
``_{protocol}`` to the top folder's name); every table has a ``judge`` column:

- ``gpt_win_rate_mtx.csv`` / ``.md``: target vs each baseline (win/tie/lose counts, rates
  over valid judgments, invalid count, bootstrap CI of the win rate, the length-controlled
  win rate beside the raw one with ties as half, the length coefficient, both methods' mean
  lengths, the share of first-position wins and, with both orders, the order consistency);
- ``gpt_win_rate.png``: stacked win/tie/lose bars (the paper's figure), the
  length-controlled win rate marked on each;
- ``gpt_judgments.csv``: every comparison, the order shown, the raw answer and the outcome;
- with ``all_pairs``: ``gpt_pairwise.csv`` and ``gpt_bradley_terry.csv`` / ``.md`` (if the
  Bradley-Terry fit fails, the other tables are still written and the ``.md`` says why);
- ``gpt_eval_config.json``: configuration, versions, counts, timings (no credentials).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

from evals.errors import EvalError
from evals.jsonl_store import JsonlAppender, repair_and_read, write_text_atomic
from evals.judge import metrics
from evals.judge.judge import (
    INVALID,
    JudgePreset,
    LocalJudgePreset,
    cache_key,
    judge_inputs,
    judge_label,
    presentation_order,
    winner,
)
from evals.judge.judge_bias import combine_orders
from evals.judge.judge_client import JudgeJob, RetryPolicy, ask_judge, run_jobs
from evals.judge.judge_protocols import DEFAULT_PROTOCOL, JudgeProtocol, get_protocol
from evals.judge.win_rate_files import (  # noqa: F401 (write_summary: public here too)
    sidecar_text,
    write_outputs,
    write_ranking,
    write_summary,
)
from evals.judge.win_rate_rows import (  # noqa: F401 (BT_COLUMNS, TARGET_COLUMNS: public here too)
    BT_COLUMNS,
    TARGET_COLUMNS,
    labelled,
    ranking_rows,
    target_rows,
)
from evals.scoring.responses import RunKey, RunResponses, load_run


@dataclass(frozen=True)
class GptEvalConfig:
    """Validated options of one evaluation (see ``evals/gpt_evals.py --help``)."""

    run: RunKey
    output_dir: Path = Path("responses")
    results_dir: Path = Path("results")
    cache_path: Path = Path("results/judge_cache.jsonl")
    methods: tuple[str, ...] = ("base", "pref", "beam", "la", "amulet")
    target: str = "amulet"
    all_pairs: bool = False
    preset: JudgePreset = field(default_factory=JudgePreset)
    base_url: str | None = None
    timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retry_invalid: bool = False
    max_concurrency: int = 8
    bootstrap: int = 1000
    bt_alpha: float = 0.01
    swap_seed: int = 42  # decides the order shown, hence the cache keys
    bootstrap_seed: int = 42  # decides only the resampling: changing it asks nothing
    max_questions: int | None = None
    dry_run: bool = False
    plot: bool = True
    progress: bool = True
    judge_source: str | None = None  # a local judge's directory, .gguf file or hub id
    judge_device: str = "auto"
    protocol: str = DEFAULT_PROTOCOL  # a name in evals.judge.judge_protocols.PROTOCOLS
    both_orders: bool = False  # judge every pair with each method shown first once

    def __post_init__(self) -> None:
        if len(self.methods) < 2:
            raise EvalError(f"need at least two methods to compare, got {list(self.methods)}")
        if self.target not in self.methods:
            raise EvalError(
                f"--target {self.target!r} is not among --methods {','.join(self.methods)}"
            )
        checks = [
            (self.max_concurrency >= 1, f"--max_concurrency must be >= 1: {self.max_concurrency}"),
            (self.retry.max_retries >= 0, "--max_retries must be >= 0"),
            (self.retry.max_invalid_retries >= 0, "--max_invalid_retries must be >= 0"),
            (self.retry.base_delay >= 0, "--retry_base_delay must be >= 0"),
            (self.bootstrap >= 0, f"--bootstrap must be >= 0, got {self.bootstrap}"),
            (self.bt_alpha > 0, f"--bt_alpha must be > 0, got {self.bt_alpha}"),
            (self.preset.max_tokens >= 1, "--judge_max_tokens must be >= 1"),
            (self.max_questions is None or self.max_questions >= 1, "--max_questions must be >= 1"),
            (self.preset.prompt_version == self.judge_protocol.version,
             f"the judge preset's prompt_version {self.preset.prompt_version!r} is not protocol "
             f"{self.protocol}'s ({self.judge_protocol.version}): build the preset with "
             f"evals.judge.judge_protocols.get_protocol({self.protocol!r}).preset()"),
        ]
        for ok, message in checks:
            if not ok:
                raise EvalError(message)

    @property
    def is_local(self) -> bool:
        return isinstance(self.preset, LocalJudgePreset)

    @property
    def judge_protocol(self) -> JudgeProtocol:
        return get_protocol(self.protocol)

    @property
    def judge(self) -> str:
        """The judge's name, as every table, figure and log line shows it (with the protocol's
        name unless it is the paper's)."""
        suffix = "" if self.protocol == DEFAULT_PROTOCOL else f" [{self.protocol}]"
        return judge_label(self.preset) + suffix

    @property
    def prefix(self) -> str:
        """Output file names start with ``gpt_`` only for an API (GPT) judge."""
        return "" if self.is_local else "gpt_"

    @property
    def out_dir(self) -> Path:
        suffix = "" if self.protocol == DEFAULT_PROTOCOL else f"_{self.protocol}"
        if self.is_local:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "__", self.preset.model.strip("/"))
            return (self.results_dir / f"local_judge_win_rate{suffix}" / slug
                    / Path(*self.run.parts()))
        return self.results_dir / f"gpt_win_rate{suffix}" / Path(*self.run.parts())


@dataclass(frozen=True)
class Comparison:
    """One (question, method pair); ``first`` is shown as Text 1."""

    index: int
    method_a: str
    method_b: str
    first: str
    second: str
    key: str
    messages: list[dict]
    same_texts: bool = False  # both methods wrote the same response


def method_pairs(methods: tuple[str, ...], target: str, all_pairs: bool) -> list[tuple[str, str]]:
    """Target against each other method, or every unordered pair in ``methods`` order.

    >>> method_pairs(("base", "la", "amulet"), "amulet", False)
    [('amulet', 'base'), ('amulet', 'la')]
    >>> method_pairs(("base", "la", "amulet"), "amulet", True)
    [('base', 'la'), ('base', 'amulet'), ('la', 'amulet')]
    """
    if all_pairs:
        return list(combinations(methods, 2))
    return [(target, m) for m in methods if m != target]


def build_comparisons(
    responses: RunResponses, pairs: list[tuple[str, str]], seed: int, preset: JudgePreset,
    protocol: JudgeProtocol | None = None, both_orders: bool = False,
) -> list[Comparison]:
    """Every comparison of the run, with its seeded presentation order and cache key.

    The question and preference shown are :func:`evals.judge.judge.judge_inputs`' (a PAD preference
    prompt becomes a preference sentence). With ``both_orders`` each pair and question is
    judged twice, the seeded order first and then the other one (the first of the two is
    the single-order run's comparison, so its cached answer is reused).
    """
    protocol = protocol or get_protocol(DEFAULT_PROTOCOL)
    comparisons = []
    shown = {item.index: judge_inputs(item.question, item.preference, responses.key.pref)
             for item in responses.items}
    for method_a, method_b in pairs:
        for item in responses.items:
            order = presentation_order(seed, item.index, method_a, method_b)
            text_1 = responses.texts[order[0]][item.index]
            text_2 = responses.texts[order[1]][item.index]
            for first, second in (order, order[::-1]) if both_orders else (order,):
                messages = protocol.messages(
                    *shown[item.index],
                    responses.texts[first][item.index],
                    responses.texts[second][item.index],
                )
                key = cache_key(preset, messages)
                comparisons.append(Comparison(item.index, method_a, method_b, first, second,
                                              key, messages, text_1 == text_2))
    return comparisons


def load_cache(path: Path) -> dict[str, dict]:
    """``{key: record}`` from the JSONL cache; a later line for a key wins."""
    return {r["key"]: r for r in repair_and_read(path) if "key" in r and "verdict" in r}


def to_judgments(comparisons: list[Comparison], cache: dict[str, dict]) -> list[metrics.Judgment]:
    """Map each cached presentation-order verdict back to method names; a pair judged in
    both orders becomes one judgment (:func:`evals.judge.judge_bias.combine_orders`)."""
    outcomes: dict[tuple[int, str, str], list[str]] = {}
    for c in comparisons:
        outcome = winner(cache[c.key]["verdict"], c.first, c.second)
        outcomes.setdefault((c.index, c.method_a, c.method_b), []).append(outcome)
    return [metrics.Judgment(index, a, b, combine_orders(found))
            for (index, a, b), found in outcomes.items()]


def comparison_counts(comparisons: list[Comparison], cache: dict[str, dict], to_ask: int,
                      questions: int, pairs: int) -> dict[str, int]:
    """What a run needs from the judge: ``comparisons`` (questions x pairs, x 2 with both
    orders); ``requests``, the distinct judge requests among them (two comparisons showing
    the same question and the same two texts in the same order share one request and its
    answer, e.g. when two methods wrote the same response); ``cached``, the requests already
    answered in the cache; ``to_ask`` = requests - cached (plus cached invalid answers with
    ``--retry_invalid``); ``identical_texts``, the comparisons of two identical responses (the
    judge is asked them too, as the paper's protocol does)."""
    keys = {c.key for c in comparisons}
    return {"comparisons": len(comparisons), "questions": questions, "pairs": pairs,
            "requests": len(keys), "cached": sum(k in cache for k in keys), "to_ask": to_ask,
            "identical_texts": sum(c.same_texts for c in comparisons)}


class LazyLocalJudge:
    """Loads ``config``'s local judge on first use, once for every run sharing this object."""

    def __init__(self, config: GptEvalConfig) -> None:
        self.config, self._judge = config, None

    def get(self):
        if self._judge is None:
            from transformers.utils import logging as hf_logging

            from evals.judge.local_judge import load_local_judge

            config = self.config
            bars_were_on = hf_logging.is_progress_bar_enabled()
            if config.progress:
                print(f"loading the judge {config.judge}", file=sys.stderr)
            else:
                hf_logging.disable_progress_bar()  # transformers' own "Loading weights" bar
            try:
                self._judge = load_local_judge(config.judge_source or config.preset.model,
                                               config.judge_device, config.preset,
                                               config.retry.max_invalid_retries,
                                               protocol=config.judge_protocol)
            finally:
                if bars_were_on:
                    hf_logging.enable_progress_bar()
        return self._judge


def _ask(config: GptEvalConfig, jobs: list[JudgeJob], local_judge: LazyLocalJudge | None
         ) -> dict[str, dict]:
    if config.is_local:
        ask, concurrency = local_judge.get().ask, 1  # one model answers one prompt at a time
    else:
        from openai_key_info import MissingKeyError, build_client

        try:
            client, creds = build_client(config.base_url, config.timeout)
        except MissingKeyError as exc:
            raise EvalError(f"{exc} ({len(jobs)} judgments are not cached yet)") from None
        if config.progress:
            print(f"asking {config.preset.model} via {creds.describe()}", file=sys.stderr)

        def ask(messages: list[dict]) -> dict:
            return ask_judge(client, config.preset, messages, config.retry,
                             protocol=config.judge_protocol)

        concurrency = config.max_concurrency
    with JsonlAppender(config.cache_path) as appender:
        return run_jobs(jobs, ask, config.preset, appender, concurrency, config.progress)


def evaluate(config: GptEvalConfig, local_judge: LazyLocalJudge | None = None) -> dict:
    """Run (or resume) the evaluation; return ``{"target": rows, "ranking": rows | None, ...}``.

    A local judge (``config.preset`` a :class:`LocalJudgePreset`) is loaded by ``local_judge``
    only when something is not cached yet; pass one object to every run to load it once.
    """
    start = time.monotonic()
    local_judge = local_judge or (LazyLocalJudge(config) if config.is_local else None)
    responses = load_run(config.output_dir, config.run, list(config.methods))
    if config.max_questions is not None:
        kept = responses.items[: config.max_questions]
        responses = RunResponses(responses.key, kept, responses.texts,
                                 responses.settings_problems)
    pairs = method_pairs(config.methods, config.target, config.all_pairs)
    comparisons = build_comparisons(responses, pairs, config.swap_seed, config.preset,
                                    config.judge_protocol, config.both_orders)
    cache = load_cache(config.cache_path)
    todo: dict[str, JudgeJob] = {}
    for c in comparisons:
        cached = cache.get(c.key)
        if cached is None or (config.retry_invalid and cached["verdict"] == INVALID):
            meta = {"run": list(config.run.parts()), "index": c.index, "text_1": c.first,
                    "text_2": c.second}
            todo.setdefault(c.key, JudgeJob(c.key, c.messages, meta))
    counts = comparison_counts(comparisons, cache, len(todo), len(responses.items), len(pairs))
    if config.dry_run:
        return {"counts": counts, "target": None, "ranking": None, "ranking_error": None}
    if todo:
        cache.update(_ask(config, list(todo.values()), local_judge))
    judgments = to_judgments(comparisons, cache)
    methods = list(config.methods)
    indices = [item.index for item in responses.items]
    tensor = metrics.outcome_tensor(judgments, methods, indices)
    weights = (
        metrics.bootstrap_weights(len(indices), config.bootstrap, config.bootstrap_seed)
        if config.bootstrap else None
    )
    lengths = {m: np.array([len(responses.texts[m][i]) for i in indices], dtype=float)
               for m in methods}
    verdicts = {c.key: cache[c.key]["verdict"] for c in comparisons}
    target = labelled(target_rows(judgments, methods, config.target, tensor, weights, lengths,
                                  comparisons, verdicts), config.judge)
    counts["invalid"] = sum(j.outcome == INVALID for j in judgments)
    write_outputs(config, comparisons, cache, judgments, pairs, target)
    ranking, ranking_error = None, None
    if config.all_pairs:  # after the tables are written: a failed fit must not lose them
        try:
            ranking, counts["bt_failed_replicates"] = ranking_rows(
                tensor, methods, weights, config.bt_alpha
            )
            ranking = labelled(ranking, config.judge)
        except metrics.BradleyTerryError as exc:
            ranking_error = str(exc)
        write_ranking(config.out_dir, config.prefix, ranking, ranking_error)
    preferences = sorted({judge_inputs(item.question, item.preference, config.run.pref)[1]
                          for item in responses.items})
    write_text_atomic(
        config.out_dir / f"{config.prefix}eval_config.json",
        sidecar_text(config, counts, time.monotonic() - start, ranking_error, preferences,
                 list(responses.settings_problems)),
    )
    return {"counts": counts, "target": target, "ranking": ranking,
            "ranking_error": ranking_error}
