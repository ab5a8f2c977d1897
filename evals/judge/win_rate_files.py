"""The files of one GPT win-rate evaluation: tables, figure, sidecar and the summary.

Written by :func:`evals.judge.win_rate.evaluate` (see its module docstring for the layout); every
final file goes through a temporary sibling and ``os.replace``.
"""

from __future__ import annotations

import json
import platform
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import numpy as np

from DecodingMethodsModels.pipeline.provenance import git_commit
from evals.jsonl_store import write_text_atomic
from evals.judge.win_rate_rows import (
    BT_COLUMNS,
    JUDGMENT_COLUMNS,
    PAIR_COLUMNS,
    TARGET_COLUMNS,
    judgment_rows,
    labelled,
    pair_rows,
)
from evals.tables import to_csv, to_markdown
from openai_key_info import redact


def sidecar_text(config, counts: dict, seconds: float,
                 ranking_error: str | None = None, preferences: list[str] | None = None,
                 settings_problems: list[str] | None = None) -> str:
    """The ``eval_config.json`` of one run: configuration, judge, versions, counts, timings
    (the base URL and argv redacted)."""
    data = asdict(config)
    data["base_url"] = redact(config.base_url) if config.base_url else None
    data = json.loads(json.dumps(data, default=str))
    if config.is_local:
        import torch
        import transformers

        versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    else:
        import openai

        versions = {"openai": openai.__version__}
    data.update({
        "judge": config.judge, "judge_backend": "local" if config.is_local else "openai",
        "preferences_shown": preferences,
        "response_settings_problems": settings_problems or [],
        "counts": counts, "ranking_error": ranking_error, "seconds": round(seconds, 3),
        "git": git_commit(), "python": platform.python_version(), **versions,
        "numpy": np.__version__, "scikit-learn": sklearn_version(),
        "length_control": "scikit-learn LogisticRegression (L1, C=100, liblinear, no "
                          "intercept, tol 1e-10) on [1, tanh(std length difference), question "
                          "difficulty]",
        "argv": [redact(a) for a in sys.argv],
    })
    return json.dumps(data, indent=2) + "\n"


def sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


def write_ranking(out: Path, prefix: str, ranking: list[dict] | None, error: str | None) -> None:
    """The ranking tables, or, if the fit failed, a note saying why (and no stale CSV)."""
    if ranking is None:
        (out / f"{prefix}bradley_terry.csv").unlink(missing_ok=True)
        write_text_atomic(out / f"{prefix}bradley_terry.md",
                          f"Bradley-Terry ranking failed: {error}\n")
        return
    write_text_atomic(out / f"{prefix}bradley_terry.csv", to_csv(ranking, BT_COLUMNS))
    write_text_atomic(out / f"{prefix}bradley_terry.md", to_markdown(ranking, BT_COLUMNS) + "\n")


def write_outputs(config, comparisons, cache, judgments, pairs, target) -> None:
    out, prefix, judge = config.out_dir, config.prefix, config.judge
    write_text_atomic(out / f"{prefix}win_rate_mtx.csv", to_csv(target, TARGET_COLUMNS))
    write_text_atomic(out / f"{prefix}win_rate_mtx.md",
                      to_markdown(target, TARGET_COLUMNS) + "\n")
    write_text_atomic(out / f"{prefix}judgments.csv",
                      to_csv(labelled(judgment_rows(comparisons, cache), judge), JUDGMENT_COLUMNS))
    if config.all_pairs:
        pairwise = to_csv(labelled(pair_rows(judgments, pairs), judge), PAIR_COLUMNS)
        write_text_atomic(out / f"{prefix}pairwise.csv", pairwise)
    if config.plot:
        from evals.judge.plots import plot_win_tie_lose

        bars = [{**r, "label": f"{r['target']} ({r['target_mean_chars']:.0f} ch) vs "
                               f"{r['baseline']} ({r['baseline_mean_chars']:.0f} ch)"}
                for r in target]
        # wrapped: a long model or dataset name must not run off the 7-inch figure
        title = textwrap.fill(f"judge: {judge}", 70) + "\n" + textwrap.fill(
            " / ".join(config.run.parts()), 70)
        plot_win_tie_lose(bars, title, out / f"{prefix}win_rate.png")


SUMMARY_COLUMNS = ["preference", "model", "dataset", *TARGET_COLUMNS]


def write_summary(configs: list, results: list[dict]) -> Path:
    """Every setting's target-vs-baseline rows in one table, next to the settings' folders;
    returns the CSV's path (a ``.md`` twin is written too)."""
    rows = [
        {"preference": c.run.pref, "model": c.run.model, "dataset": c.run.dataset, **row}
        for c, result in zip(configs, results, strict=True) for row in result["target"]
    ]
    root = configs[0].out_dir.parents[2]
    path = root / f"{configs[0].prefix}win_rate_summary.csv"
    write_text_atomic(path, to_csv(rows, SUMMARY_COLUMNS))
    write_text_atomic(path.with_suffix(".md"), to_markdown(rows, SUMMARY_COLUMNS) + "\n")
    return path
