"""The report folder: one markdown file with every figure (PNG) beside the JSON behind it,
and a side-by-side view of the same questions across methods and strengths."""

from __future__ import annotations

import json
import math
from pathlib import Path

from evals.errors import EvalError
from evals.jsonl_store import write_text_atomic
from evals.study import analysis_k, analysis_sweep, analysis_table1
from evals.study.paper_results import PAPER_METHODS, PAPER_RM, PAPER_RM_LABEL, PERSONAL_DATASET
from evals.tables import to_markdown

EXCERPT_CHARS = 400


def write_json(path: Path, data: object) -> None:
    """JSON with NaN and infinities written as null (strict JSON readers reject them)."""
    write_text_atomic(path, json.dumps(_finite(data), indent=2, ensure_ascii=False) + "\n")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# ---- the parts, each written to `out` and returned as markdown -------------------------------

def k_part(out: Path) -> str:
    rows = analysis_k.k_table()
    curves = analysis_k.k_curves()
    write_json(out / "k_table.json", {"defaults": analysis_k.DEFAULTS, "rows": rows,
                                      "curves": curves})
    analysis_k.plot_k(rows, curves, out / "k_ratio.png")
    tables = analysis_k.markdown_tables(rows)
    write_text_atomic(out / "k_table.md", tables + "\n")
    return ("## Amulet's mixture strength k(T, alpha, lambda, eta)\n\n"
            "Amulet is Linear Alignment with ratio k; transformers' CFG is the same mixture at "
            "guidance_scale = 1 + k, the implicit PAD at w = 1 + k. Regimes: alpha < lambda: k "
            "converges to alpha / (lambda - alpha); alpha = lambda: k grows like ln T; "
            "alpha > lambda: k diverges like T^(alpha/lambda - 1).\n\n"
            "![k](k_ratio.png)\n\nData: [k_table.json](k_table.json)\n\n" + tables + "\n")


def load_sweep(directory: Path, tokenizer: str | None = None) -> dict:
    """A sweep's data: its ``sweep.json`` if the sweep command wrote one, else computed from
    the response files under ``directory``."""
    saved = Path(directory) / "sweep.json"
    if saved.is_file():
        return json.loads(saved.read_text(encoding="utf-8"))
    points = analysis_sweep.find_points([directory])
    return analysis_sweep.sweep_data(points, "ratio", tokenizer)


def sweep_part(out: Path, data: dict, name: str) -> str:
    write_json(out / f"{name}.json", data)
    analysis_sweep.plot_sweep(data, out / f"{name}.png")
    return (f"## Text indicators against the mixture strength (swept by {data['axis']})\n\n"
            f"{data['label']}. {data['equivalents']}. Error bars: one standard error over "
            "questions.\n\n"
            f"![{name}]({name}.png)\n\nData: [{name}.json]({name}.json)\n\n"
            + analysis_sweep.markdown_summary(data) + "\n")


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[:EXCERPT_CHARS] + " [...]"


def side_by_side_sweep(data: dict, questions: int) -> str:
    """The first ``questions`` questions, each with every point's response (base first)."""
    from DecodingMethodsModels.pipeline.outputs import read_json

    texts, asked = {}, {}
    for point in data["points"]:
        label = ("base (no preference)" if point["ratio"] is None
                 else f"{point['pref']}, {point['method']}, r = {point['ratio']:.3g}")
        for record in read_json(Path(point["path"])) or []:
            asked.setdefault(record["index"], record["question"])
            texts.setdefault(record["index"], {})[label] = record["response"]
    return _side_by_side(asked, texts, questions)


def side_by_side_grid(responses_dir: Path, questions: int, settings: int) -> str:
    """The first ``questions`` questions of the first ``settings`` settings found under a
    main.py output directory, each with every method's response."""
    from evals.scoring.responses import RunKey, load_run

    parts = []
    directories = sorted(p for p in Path(responses_dir).glob("*/*/*") if p.is_dir())
    for directory in directories[:settings]:
        found = {p.stem for p in directory.glob("*.json") if not p.name.endswith(".meta.json")}
        methods = [m for m in PAPER_METHODS if m in found] + sorted(found - set(PAPER_METHODS))
        if len(methods) < 2:
            continue
        key = RunKey(*directory.relative_to(responses_dir).parts)
        try:
            run = load_run(Path(responses_dir), key, methods, skip_partial=True)
        except EvalError as exc:  # one unusable setting does not stop the report
            parts.append(f"### {' / '.join(key.parts())}\n\nnot shown: {exc}\n")
            continue
        asked = {item.index: item.question for item in run.items}
        texts = {i: {m: run.texts[m][i] for m in run.methods} for i in asked}
        parts.append(f"### {' / '.join(key.parts())}\n\n" + _side_by_side(asked, texts,
                                                                           questions))
    return "\n".join(parts)


def _side_by_side(asked: dict[int, str], texts: dict[int, dict[str, str]], questions: int) -> str:
    lines = []
    for index in sorted(asked)[:questions]:
        lines.append(f"**Question {index}:** {_excerpt(asked[index])}\n")
        for label, text in texts[index].items():
            lines.append(f"- *{label}*: {_excerpt(text) or '(empty)'}")
        lines.append("")
    return "\n".join(lines)


def table1_part(out: Path, results_dir: Path, rm_name: str = PAPER_RM,
                rm_label: str = PAPER_RM_LABEL) -> str:
    """Table 1 (ours beside the paper's averages) and the win-tie-lose figure, as far as the
    result files exist; a note saying which are missing otherwise."""
    from evals.judge.plots import plot_win_tie_lose

    parts = ["## Table 1 and the GPT judge\n"]
    scores = analysis_table1.read_rm_scores(results_dir, rm_name, rm_label)
    if scores:
        layout = analysis_table1.table1_rows(scores)
        comparison = analysis_table1.comparison_rows(scores)
        columns = analysis_table1.table1_columns(scores)
        write_json(out / "table1.json", {"rm": rm_name, "label": rm_label, "scores": scores,
                                         "table1": layout, "vs_paper": comparison})
        table = to_markdown(layout, columns)
        versus = to_markdown(comparison, ["model", "preference", "method", "ours", "datasets",
                                          "paper"], digits=3)
        write_text_atomic(out / "table1.md", table + "\n\n" + versus + "\n")
        parts.append(f"Scorer {rm_name} [{rm_label}], mean per method "
                     "(data: [table1.json](table1.json)):\n\n" + table + "\n\nAverage over the "
                     "datasets found, beside the paper's average over its four (None: the paper "
                     "has no such number):\n\n" + versus + "\n")
    else:
        parts.append(f"No reward-model averages ({rm_name}, {rm_label}) under "
                     f"{results_dir}/rm_score: run evals/rm_evals.py first.\n")
    wins = analysis_table1.read_win_rates(results_dir)
    if wins:
        pooled = analysis_table1.pooled_win_tie_lose(wins)
        personal = analysis_table1.pooled_win_tie_lose(wins, PERSONAL_DATASET)
        write_json(out / "win_tie_lose.json", {"settings": wins, "pooled": pooled,
                                               "personal": personal})
        settings = len({(w["preference"], w["model"], w["dataset"]) for w in wins})
        plot_win_tie_lose(pooled, f"GPT judge, pooled over {settings} setting(s)",
                          out / "win_tie_lose.png")
        columns = ["target", "baseline", "settings", "win", "tie", "lose", "win_rate",
                   "mean_setting_win_rate", "paper_win_rate"]
        parts.append("![win tie lose](win_tie_lose.png)\n\nData: "
                     "[win_tie_lose.json](win_tie_lose.json)\n\n" + to_markdown(pooled, columns)
                     + "\n")
        if personal:
            parts.append("Personal dataset only (the paper: Amulet's win rate averaged over "
                         "models and preferences):\n\n" + to_markdown(personal, columns) + "\n")
    else:
        parts.append(f"No GPT-judge results under {results_dir}/gpt_win_rate: run "
                     "evals/gpt_evals.py first.\n")
    return "\n".join(parts)


def write_report(out: Path, sweeps: list[Path], results_dir: Path | None,
                 responses_dir: Path | None, identity: Path | None, questions: int = 3,
                 settings: int = 2, tokenizer: str | None = None) -> Path:
    """Write ``out/report.md`` with every part that has data; returns its path."""
    out = Path(out)
    if identity is not None and not Path(identity).is_file():
        raise EvalError(f"cannot read --identity {identity}: no such file")
    missing = [str(s) for s in sweeps if not Path(s).is_dir()]
    if missing:
        raise EvalError(f"--sweep {', '.join(missing)}: no such folder")
    out.mkdir(parents=True, exist_ok=True)
    sections = ["# What each method does to the text\n",
                "Every figure has its data beside it as JSON. Text indicators are descriptive "
                "statistics, not quality scores.\n", k_part(out)]
    if identity is not None:
        try:
            result = json.loads(Path(identity).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EvalError(f"cannot read --identity {identity}: {exc}") from None
        from evals.study.analysis_identity import identity_markdown

        write_json(out / "identity.json", result)
        sections.append("## Token identity: Amulet == LA(k) == CFG (== implicit PAD)\n\n"
                        + identity_markdown(result) + "\n")
    for number, directory in enumerate(sweeps, 1):
        data = load_sweep(directory, tokenizer)
        name = f"sweep{number}_{data['axis']}"
        sections.append(sweep_part(out, data, name))
        sections.append("### Side by side: the same questions across strengths\n\n"
                        + side_by_side_sweep(data, questions))
    if responses_dir is not None and Path(responses_dir).is_dir():
        view = side_by_side_grid(Path(responses_dir), questions, settings)
        if view:
            sections.append("## Side by side: the same questions across methods\n\n" + view)
    if results_dir is not None:
        sections.append(table1_part(out, Path(results_dir)))
    path = out / "report.md"
    write_text_atomic(path, "\n".join(sections))
    return path
