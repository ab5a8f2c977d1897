"""The combined table of ``rm_evals``: scorer columns, indicator columns, and what they are.

Column names are ``{model}:{head}``, with ``{model}`` the model's last path component (its
``owner__repo`` slug when two scorers share it) and ``{head}`` the head's name (an ArmoRM
attribute, ``score``, ``reward`` for a one-label model, a label name). The indicator columns
(:data:`evals.scoring.rm_report.INDICATOR_COLUMNS`) describe the text and need no model.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from evals.errors import EvalError
from evals.jsonl_store import write_text_atomic
from evals.scoring.indicators import INDICATORS_LABEL
from evals.scoring.rm_report import (
    INDICATOR_COLUMNS,
    best_methods,
    best_share,
    indicator_row,
    method_means,
)
from evals.scoring.scorers import Head, ScorerSpec, ScorerSpecError
from evals.tables import to_csv, to_markdown

AVG_COLUMNS = ["method", "mean", "std", "n"]
# The summary's columns besides one per method; a method may not share a name with them.
SETTING_COLUMNS = ("preference", "model", "dataset")
VERDICT_COLUMNS = ("best", "skipped")
# Re-encoded text can differ from the generated ids by a token or two (indicators.py).
REENCODED_CAP_SLACK = 2


@dataclass(frozen=True)
class Column:
    """One scorer column: its spec, the model's file-name slug, the resolved head."""

    spec: ScorerSpec
    slug: str
    head: Head | None


def table_columns(columns: list[Column]) -> list[str]:
    """``{model}:{head}`` per column; two columns naming the same number are an error."""
    shorts = [Path(c.spec.model.rstrip("/")).name or c.slug for c in columns]
    names = []
    for column, short in zip(columns, shorts, strict=True):
        shared = any(s == short and c.spec.model != column.spec.model
                     for c, s in zip(columns, shorts, strict=True))
        names.append(f"{column.slug if shared else short}:{column.head.name}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ScorerSpecError(f"scorer column(s) {', '.join(twice)} given more than once")
    return names


def _sidecar(config, responses, method: str) -> dict:
    if config.input_files:
        return {}
    path = config.output_dir / Path(*responses.key.parts()) / f"{method}.meta.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("config") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def _is_local_model(name: str) -> bool:
    """Whether a tokenizer can be had without the hub: the embedded model, a GGUF file, a
    directory."""
    from DecodingMethodsModels.models.loading import EMBEDDED_MODEL

    return name == EMBEDDED_MODEL or name.endswith(".gguf") or Path(name).expanduser().is_dir()


def _length_tokenizer(name: str):
    """``text -> token ids`` with ``name``'s tokenizer (the embedded model and GGUF files
    through the project's loader, anything else through ``AutoTokenizer``)."""
    from transformers import AutoTokenizer

    from DecodingMethodsModels.errors import UserError
    from DecodingMethodsModels.models.loading import EMBEDDED_MODEL, load_tokenizer, resolve_model

    try:
        if name == EMBEDDED_MODEL or name.endswith(".gguf"):
            tokenizer = load_tokenizer(resolve_model(name))
        else:
            tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, UserError) as exc:
        raise EvalError(f"--length_tokenizer {name}: cannot load it ({str(exc)[:160]})") from None
    return lambda text: tokenizer.encode(text, add_special_tokens=False)


def indicator_rows(config, responses) -> dict[str, dict]:
    """Per method ``{"columns": indicator row, "max_new_tokens", "length_tokenizer"}``.

    Lengths in tokens re-encode each response with ``--length_tokenizer`` (auto: the
    generating model named in the method's ``.meta.json`` when it needs no hub: the embedded
    model, a GGUF file or a directory);
    the share hitting ``max_new_tokens`` (``--max_new_tokens``, else the ``.meta.json``)
    then allows :data:`REENCODED_CAP_SLACK` tokens of slack.
    """
    loaded: dict[str, object] = {}
    out = {}
    for method in responses.methods:
        sidecar = _sidecar(config, responses, method)
        name = config.length_tokenizer
        if name == "auto":
            guess = sidecar.get("model_name")
            name = guess if isinstance(guess, str) and _is_local_model(guess) else "none"
        counts = None
        texts = [responses.texts[method][item.index] for item in responses.items]
        if name != "none":
            if name not in loaded:
                loaded[name] = _length_tokenizer(name)
            counts = [len(loaded[name](t)) for t in texts]
        budget = config.max_new_tokens or sidecar.get("max_new_tokens")
        budget = budget if isinstance(budget, int) and budget > 0 else None
        row = indicator_row(texts, counts, budget, REENCODED_CAP_SLACK)
        out[method] = {"columns": row, "max_new_tokens": budget,
                       "length_tokenizer": None if name == "none" else name}
    if config.length_tokenizer != "none" and any(
        v["length_tokenizer"] is None for v in out.values()
    ):
        print("note: no tokenizer for lengths in tokens (pass --length_tokenizer); "
              "len_tokens and hit_max_new_tokens are left empty", file=sys.stderr)
    return out


def table_metadata(config, columns, names, models, modes, indicators, skipped) -> dict:
    """What the table holds: scorers and heads, prompt modes, indicators, skipped questions;
    ``modes``, ``indicators`` and ``skipped`` map each run's key to its own."""
    return {
        "scorers": [
            {"column": name, "model": c.spec.model, "spec": c.spec.head, "legacy": c.spec.legacy,
             "head_kind": c.head.kind, "head_index": c.head.index, "head_name": c.head.name,
             "implementation": models[c.spec.model].implementation,
             "input_format": models[c.spec.model].input_format,
             "dtype": models[c.spec.model].dtype,
             "scores_file": f"{c.slug}.scores.jsonl"}
            for c, name in zip(columns, names, strict=True)
        ],
        "prompt_mode": {"requested": config.scorer_prompt,
                        "resolved": {"/".join(k.parts()): m for k, m in modes.items()}},
        "indicators": None if not config.indicators else {
            "label": INDICATORS_LABEL, "columns": list(INDICATOR_COLUMNS),
            "cap_slack": REENCODED_CAP_SLACK,
            "per_run": {"/".join(key.parts()): {m: {k: v for k, v in d.items() if k != "columns"}
                                               for m, d in by_method.items()}
                        for key, by_method in indicators.items()},
        },
        "skipped_as_too_long": {"/".join(k.parts()): v for k, v in skipped.items()},
        "input_files": [[n, str(p)] for n, p in config.input_files],
        "scoring": config.scoring,
    }


_PROMPT_WORDS = {"question": "the question alone (a PAD preference prompt cut out)",
                 "question_and_preference": 'question + " " + preference sentence'}


def table_markdown(rows: list[dict], header: list[str], meta: dict) -> str:
    """The table in markdown, preceded by what each column is."""
    left_out = ("a response too long for a scorer is left out of its own method's mean, as "
                "the public script averages each file" if meta["scoring"] != "project" else
                "a question too long for a scorer is left out of that scorer's column for "
                "every method")
    lines = [f"Scorer columns (means over questions; {left_out}):", ""]
    for s in meta["scorers"]:
        what = {"reward": f"reward head {s['head_index']} ({s['head_name']})",
                "score": "gated score",
                "logit": "scalar reward" if s["head_name"] == "reward"
                else f"raw logit {s['head_index']}",
                "prob": f"softmax probability of label {s['head_index']} ({s['head_name']})",
                "loglik": "mean log-probability per response token (not a reward model)"}
        lines.append(f"- `{s['column']}`: {s['model']}, {what[s['head_kind']]}; input: "
                     f"{s['input_format'].replace('_', ' ')}")
    modes = sorted(set(meta["prompt_mode"]["resolved"].values()))
    if meta["scoring"] == "project":
        lines.append(f"- prompt shown to the scorers: "
                     f"{'; '.join(_PROMPT_WORDS[m] for m in modes)} "
                     f"(--scorer_prompt {meta['prompt_mode']['requested']})")
    else:
        lines.append(f"- inputs built as {meta['scoring'].upper()}'s measure_reward.py builds "
                     f"them (--scoring {meta['scoring']})")
    if meta["indicators"]:
        lines += ["", f"Indicator columns ({', '.join(f'`{c}`' for c in INDICATOR_COLUMNS)}): "
                  f"{INDICATORS_LABEL}. Lengths are means; `hit_max_new_tokens`, `degenerate`: "
                  "shares of responses; `distinct_1`/`_2`: corpus level; `rep_n` in percent "
                  "and `diversity` as in ARGS."]
    return "\n".join(lines) + "\n\n" + to_markdown(rows, header)


def summary_columns(methods: tuple[str, ...]) -> list[str]:
    """Columns of the summary table: the setting, each method's mean, the best, the skipped.

    >>> summary_columns(("base", "pref"))
    ['preference', 'model', 'dataset', 'base', 'pref', 'best', 'skipped']
    """
    return [*SETTING_COLUMNS, *methods, *VERDICT_COLUMNS]


def summary(per_run, methods: list[str]) -> dict:
    """One column's means per setting, its best methods, and each method's share of wins."""
    settings = []
    for key, rows, skipped in per_run:
        means = {r["method"]: r["mean"] for r in rows}
        settings.append({
            "preference": key.pref, "model": key.model, "dataset": key.dataset, **means,
            "best": "+".join(best_methods(means)), "skipped": skipped,
        })
    share = best_share([{m: s.get(m, float("nan")) for m in methods} for s in settings],
                       methods)
    return {"settings": settings, "share": share}


def summary_markdown(found: dict, columns: list[str]) -> str:
    """The summary of :func:`summary` in markdown."""
    return (
        to_markdown(found["settings"], columns)
        + f"\n\nShare of the {len(found['settings'])} settings where each method scores "
        "highest (a tie for the top splits the credit):\n\n"
        + to_markdown(found["share"], ["method", "best", "share"])
    )


def _write_table(base: Path, rows: list[dict], header: list[str], meta: dict) -> None:
    write_text_atomic(base.with_suffix(".csv"), to_csv(rows, header))
    write_text_atomic(base.with_suffix(".md"), table_markdown(rows, header, meta) + "\n")
    write_text_atomic(base.with_suffix(".meta.json"), json.dumps(meta, indent=2) + "\n")


def write_outputs(config, loaded, columns, names, values, skipped, modes, models) -> dict:
    """Every output file of a scored evaluation (see :mod:`evals.scoring.rm_run`); returns
    ``{"columns", "labels", "runs": [(key, {column: avg rows}, {column: skipped count})],
    "settings": {column: summary}, "tables": [(key or None, rows, header)], "modes"}``.

    ``values[(run key, k)]`` is column k's ``{method: {index: value}}`` in that run and
    ``skipped[(run key, k)]`` the question indices it left out of each method's mean
    (``{method: indices}``, :func:`evals.scoring.rm_report.left_out`).
    """
    ind_names = list(INDICATOR_COLUMNS) if config.indicators else []
    per_run, all_rows, tables, all_indicators = [], [], [], {}
    for responses in loaded:
        key = responses.key
        out_dir = config.results_dir / "rm_score" / Path(*key.parts())
        avgs, counts = {}, {}
        for k, column in enumerate(columns):
            rows = method_means(values[(key, k)], skipped[(key, k)])
            # questions left out of at least one method's mean (each method's n: its avg table)
            counts[names[k]] = len(set().union(*skipped[(key, k)].values()))
            avgs[names[k]] = rows
            base = out_dir / f"{column.slug}_{column.head.label}_avg"
            write_text_atomic(base.with_suffix(".csv"), to_csv(rows, AVG_COLUMNS))
            write_text_atomic(base.with_suffix(".md"), to_markdown(rows, AVG_COLUMNS) + "\n")
        indicators = indicator_rows(config, responses) if config.indicators else {}
        all_indicators[key] = indicators
        rows = []
        for method in responses.methods:
            row = {"method": method}
            for name in names:
                row[name] = next(r["mean"] for r in avgs[name] if r["method"] == method)
            row.update(indicators.get(method, {}).get("columns", {}))
            rows.append(row)
        header = ["method", *names, *ind_names]
        meta = table_metadata(config, columns, names, models, {key: modes[key]},
                              {key: indicators}, {key: counts})
        meta["response_settings_problems"] = list(responses.settings_problems)
        _write_table(out_dir / config.table_name, rows, header, meta)
        per_run.append((key, avgs, counts))
        tables.append((key, rows, header))
        all_rows += [{"preference": key.pref, "model": key.model, "dataset": key.dataset, **r}
                     for r in rows]
    settings = {}
    if config.single_run is None:
        root = config.results_dir / "rm_score"
        methods = list(dict.fromkeys(m for responses in loaded for m in responses.methods))
        for k, column in enumerate(columns):
            found = summary([(key, avgs[names[k]], counts[names[k]])
                             for key, avgs, counts in per_run], methods)
            base = root / f"{column.slug}_{column.head.label}"
            summary_cols = summary_columns(tuple(methods))
            write_text_atomic(base.with_name(base.name + "_summary.csv"),
                              to_csv(found["settings"], summary_cols))
            write_text_atomic(base.with_name(base.name + "_summary.md"),
                              summary_markdown(found, summary_cols) + "\n")
            settings[names[k]] = found
        meta = table_metadata(config, columns, names, models, modes, all_indicators,
                              {key: counts for key, _, counts in per_run})
        header = [*SETTING_COLUMNS, "method", *names, *ind_names]
        _write_table(root / config.table_name, all_rows, header, meta)
        tables.append((None, all_rows, header))
    return {"columns": names, "labels": {n: c.head.label for n, c in zip(names, columns,
                                                                         strict=True)},
            "runs": per_run, "settings": settings, "tables": tables,
            "modes": {"/".join(k.parts()): m for k, m in modes.items()}}
