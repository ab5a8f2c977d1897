"""The combined table of ``rm_evals``: scorer columns, indicator columns, and what they are.

Column names are ``{model}:{head}``, with ``{model}`` the model's last path component (its
``owner__repo`` slug when two scorers share it) and ``{head}`` the head's name (an ArmoRM
attribute, ``score``, ``reward`` for a one-label model, a label name). The indicator columns
(:data:`evals.rm_report.INDICATOR_COLUMNS`) describe the text and need no model.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from evals.errors import EvalError
from evals.indicators import INDICATORS_LABEL
from evals.rm_report import INDICATOR_COLUMNS, indicator_row
from evals.scorers import Head, ScorerSpec, ScorerSpecError
from evals.tables import to_markdown

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


def _length_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise EvalError(f"--length_tokenizer {name}: cannot load it ({str(exc)[:160]})") from None
    return lambda text: tokenizer.encode(text, add_special_tokens=False)


def indicator_rows(config, responses) -> dict[str, dict]:
    """Per method ``{"columns": indicator row, "max_new_tokens", "length_tokenizer"}``.

    Lengths in tokens re-encode each response with ``--length_tokenizer`` (auto: the
    generating model named in the method's ``.meta.json`` when that is a local directory);
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
            name = guess if isinstance(guess, str) and Path(guess).is_dir() else "none"
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
    if any(v["length_tokenizer"] is None for v in out.values()) and config.progress:
        print("note: no tokenizer for lengths in tokens (pass --length_tokenizer); "
              "len_tokens and hit_max_new_tokens are left empty", file=sys.stderr)
    return out


def table_metadata(config, columns, names, models, modes, indicators, skipped) -> dict:
    """What the table holds: scorers and heads, prompt modes, indicators, skipped questions."""
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
        "indicators": None if not indicators else {
            "label": INDICATORS_LABEL, "columns": list(INDICATOR_COLUMNS),
            "per_method": {m: {k: v for k, v in d.items() if k != "columns"}
                           for m, d in indicators.items()},
            "cap_slack": REENCODED_CAP_SLACK,
        },
        "skipped_as_too_long": {"/".join(k.parts()): v for k, v in skipped.items()},
        "input_files": [[n, str(p)] for n, p in config.input_files],
    }


_PROMPT_WORDS = {"question": "the question alone (a PAD preference prompt cut out)",
                 "question_and_preference": 'question + " " + preference sentence'}


def table_markdown(rows: list[dict], header: list[str], meta: dict) -> str:
    """The table in markdown, preceded by what each column is."""
    lines = ["Scorer columns (mean over questions; a question too long for a scorer leaves "
             "that scorer's column for every method):", ""]
    for s in meta["scorers"]:
        what = {"reward": f"reward head {s['head_index']} ({s['head_name']})",
                "score": "gated score", "logit": f"logit {s['head_index']}",
                "prob": f"softmax probability of label {s['head_index']} ({s['head_name']})"}
        lines.append(f"- `{s['column']}`: {s['model']}, {what[s['head_kind']]}; input: "
                     f"{s['input_format'].replace('_', ' ')}")
    modes = sorted(set(meta["prompt_mode"]["resolved"].values()))
    lines.append(f"- prompt shown to the scorers: {'; '.join(_PROMPT_WORDS[m] for m in modes)} "
                 f"(--scorer_prompt {meta['prompt_mode']['requested']})")
    if meta["indicators"]:
        lines += ["", f"Indicator columns ({', '.join(f'`{c}`' for c in INDICATOR_COLUMNS)}): "
                  f"{INDICATORS_LABEL}. Lengths are means; `hit_max_new_tokens`, `degenerate`: "
                  "shares of responses; `distinct_1`/`_2`: corpus level; `rep_n` in percent "
                  "and `diversity` as in ARGS."]
    return "\n".join(lines) + "\n\n" + to_markdown(rows, header)
