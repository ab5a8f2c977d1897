"""Judge-free text indicators against the mixture strength, one line per preference.

The strength axis is always the LA ratio r: ``z = log p_pref + r (log p_pref - log p_base)``.
Amulet is LA with ``r = k(T, alpha, lambda, eta)``; transformers' classifier-free guidance is
the same mixture at ``guidance_scale = 1 + r``, and PAD's reward with the decoding model as its
own reward model at ``w = 1 + r`` (restricted to PAD's top-k).

A sweep runs ``run(config)`` (DecodingMethodsModels.pipeline.runner) once per strength value,
each into its own output directory ``{out}/responses/{axis}={value}/``, or reads any existing
response files: a point is one ``{method}.json`` with its sidecar ``{method}.meta.json``, whose
fingerprint gives the ratio (la: reinforce_ratio, amulet: its amulet_ratio, pref: 0). base
responses, which see no preference, are drawn as a reference line.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from evals.errors import EvalError
from evals.scoring.indicators import INDICATORS_LABEL, PER_RESPONSE, text_indicators
from evals.study.analysis_k import save_figure

# (key in text_indicators' means, or "share_hitting_cap" from its corpus part; panel title)
PANELS = (
    ("length_tokens", "length (model tokens)"),
    ("share_hitting_cap", "share at the token cap"),
    ("distinct_1", "distinct-1"),
    ("distinct_2", "distinct-2"),
    ("rep_2", "rep-2 (%)"),
    ("rep_4", "rep-4 (%)"),
    ("degenerate", "share degenerate"),
    ("vader_compound", "sentiment: VADER compound"),
    ("flesch_reading_ease", "readability: Flesch ease"),
    ("contraction_rate", "contractions / word"),
    ("exclamations_per_sentence", "'!' / sentence"),
    ("second_person_rate", "second person / word"),
)
EQUIVALENTS = ("strength = LA ratio r; Amulet(T, alpha, lambda, eta) = LA with r = k(T, alpha, "
               "lambda, eta); transformers CFG guidance_scale = 1 + r; implicit PAD "
               "(decoding model as its own reward model) w = 1 + r over PAD's top-k")
CAP_SLACK = 1  # token counts come from re-encoding the stored text, which can differ by one


@dataclass(frozen=True)
class Axis:
    """A swept hyperparameter: the method run, the RunConfig field set, and the LA ratio it
    amounts to given the other settings."""

    name: str
    method: str
    field: str
    to_ratio: Callable[[float, object], float]
    integer: bool = False


def _amulet_ratio_with(field: str) -> Callable[[float, object], float]:
    def ratio(value: float, config) -> float:
        from DecodingMethodsModels.rules.combine import amulet_ratio

        params = {"iterations": config.iteration_num, "alpha": config.alpha,
                  "player_lambda": config.player_lambda, "eta": config.eta, field: value}
        return amulet_ratio(int(params["iterations"]), params["alpha"],
                            params["player_lambda"], params["eta"])
    return ratio


# A PAD sweep slots in as one more entry once the runner has a `pad` method, e.g.
# Axis("pad_w", "pad", "<its weight field>", lambda w, config: w - 1.0): the implicit PAD
# weight w is the LA ratio w - 1.
AXES: dict[str, Axis] = {
    "ratio": Axis("ratio", "la", "reinforce_ratio", lambda r, config: float(r)),
    "T": Axis("T", "amulet", "iteration_num", _amulet_ratio_with("iterations"), integer=True),
    "eta": Axis("eta", "amulet", "eta", _amulet_ratio_with("eta")),
}


def parse_values(text: str, axis: Axis) -> list[float]:
    """``"0,1,2"`` -> ``[0.0, 1.0, 2.0]`` (ints for an integer axis); duplicates dropped."""
    try:
        values = [int(v) if axis.integer else float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EvalError(f"--values for axis {axis.name} must be a comma list of "
                        f"{'integers' if axis.integer else 'numbers'}, got {text!r}") from None
    if not values:
        raise EvalError("--values is empty; give comma-separated strengths")
    return list(dict.fromkeys(values))


def point_dir(out: Path, axis: Axis, value: float) -> Path:
    return out / "responses" / f"{axis.name}={value:g}"


def run_sweep(base_config, axis: Axis, values: Sequence[float], out: Path) -> list[Path]:
    """``run(config)`` once per value, each into its own output directory; returns them.

    Finished points are skipped (the runner resumes), so an interrupted sweep continues.
    """
    from DecodingMethodsModels.pipeline.runner import run

    dirs = []
    for value in values:
        directory = point_dir(out, axis, value)
        config = replace(base_config, method=axis.method, output_dir=str(directory),
                         **{axis.field: value})
        run(config)
        dirs.append(directory)
    return dirs


@dataclass(frozen=True)
class Point:
    """One response file on the strength axis (``ratio`` None: the base reference)."""

    path: Path
    method: str
    pref: str
    model: str
    dataset: str
    ratio: float | None
    settings: dict
    max_new_tokens: int


def ratio_of(fingerprint: dict) -> float | None:
    """The LA ratio a run's fingerprint amounts to: pref 0, la its reinforce_ratio, amulet its
    amulet_ratio; None for methods off the axis (base, beam)."""
    method = fingerprint.get("method")
    if method == "pref":
        return 0.0
    if method == "la":
        return float(fingerprint["reinforce_ratio"])
    if method == "amulet":
        return float(fingerprint["amulet_ratio"])
    return None


def find_points(roots: Sequence[Path]) -> list[Point]:
    """Every ``{pref}/{model}/{dataset}/{method}.json`` with a readable sidecar under ``roots``
    (each root an ``--output_dir`` of main.py, or a directory holding such directories)."""
    points = []
    for root in roots:
        if not Path(root).is_dir():
            raise EvalError(f"{root} is not a directory of responses")
        for meta_path in sorted(Path(root).rglob("*.meta.json")):
            path = meta_path.with_name(meta_path.name.removesuffix(".meta.json") + ".json")
            try:
                fingerprint = json.loads(meta_path.read_text())["fingerprint"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if not path.is_file() or fingerprint.get("method") not in ("base", "pref", "la",
                                                                       "amulet"):
                continue
            pref, model, dataset = path.parent.parts[-3:]
            settings = {k: fingerprint[k] for k in ("reinforce_ratio", "iteration_num", "alpha",
                                                    "player_lambda", "eta") if k in fingerprint}
            points.append(Point(path, fingerprint["method"], pref, model, dataset,
                                ratio_of(fingerprint), settings,
                                int(fingerprint["max_new_tokens"])))
    if not points:
        raise EvalError(f"no response file with a sidecar under {', '.join(map(str, roots))}")
    return points


def _sem(values: list[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    n = len(defined)
    if n < 2:
        return float("nan")
    mean = sum(defined) / n
    return math.sqrt(sum((v - mean) ** 2 for v in defined) / (n - 1) / n)


def point_indicators(responses: list[str], token_counts: list[int], max_new_tokens: int) -> dict:
    """``text_indicators`` of one point, flattened to one value per panel, plus the standard
    error of each mean (``std / sqrt(n)``; binomial ``sqrt(p (1 - p) / n)`` for the cap share)."""
    result = text_indicators(responses, token_counts=token_counts, max_new_tokens=max_new_tokens,
                             cap_slack=CAP_SLACK)
    values = {**result["means"], "share_hitting_cap": result["corpus"]["share_hitting_cap"]}
    sem = {name: _sem([float(f(r)) for r in responses]) for name, f in PER_RESPONSE.items()}
    sem["length_tokens"] = _sem([float(c) for c in token_counts])
    p, n = values["share_hitting_cap"], len(responses)
    sem["share_hitting_cap"] = math.sqrt(p * (1 - p) / n) if n else float("nan")
    return {"n": result["n"], "values": values, "sem": sem, "corpus": result["corpus"]}


def share_mentioning(texts: Sequence[str], word: str) -> float:
    """``#{texts containing word as a whole word, any case} / len(texts)`` (NaN if none): how
    often responses echo the preference's own name, a sign that the contrast picked the
    preference prompt's words rather than its meaning."""
    if not texts:
        return float("nan")
    pattern = re.compile(rf"\b{re.escape(word)}\b", re.I)
    return sum(bool(pattern.search(t)) for t in texts) / len(texts)


def token_counter(model_name: str) -> Callable[[str], int]:
    """Length in the model's tokens of a stored response (re-encoded, no special tokens)."""
    from DecodingMethodsModels.errors import UserError
    from DecodingMethodsModels.models.loading import load_tokenizer, resolve_model

    try:
        tokenizer = load_tokenizer(resolve_model(model_name))
    except UserError as err:
        raise EvalError(f"cannot load the tokenizer of {model_name}: {err}; "
                        "pass --tokenizer") from None
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def sweep_data(points: list[Point], axis_name: str, tokenizer_name: str | None = None) -> dict:
    """The indicators of every point, grouped by preference, as the JSON behind the figure."""
    from DecodingMethodsModels.pipeline.outputs import read_json

    counters: dict[str, Callable[[str], int]] = {}
    rows = []
    for point in points:
        records = read_json(point.path)
        if not isinstance(records, list) or not records:
            raise EvalError(f"{point.path} is not a non-empty list of response records")
        fingerprint = read_json(point.path.with_name(f"{point.method}.meta.json"))["fingerprint"]
        name = tokenizer_name or fingerprint["model"]
        if name not in counters:
            counters[name] = token_counter(name)
        texts = [r["response"] for r in records]
        counts = [counters[name](t) for t in texts]
        rows.append({
            "pref": point.pref, "model": point.model, "dataset": point.dataset,
            "method": point.method, "ratio": point.ratio, "settings": point.settings,
            "max_new_tokens": point.max_new_tokens, "path": str(point.path),
            **point_indicators(texts, counts, point.max_new_tokens),
        })
        rows[-1]["values"]["mentions_preference"] = share_mentioning(texts, point.pref)
    rows.sort(key=lambda r: (r["pref"], r["ratio"] is not None, r["ratio"] or 0.0))
    return {"label": INDICATORS_LABEL, "axis": axis_name, "equivalents": EQUIVALENTS,
            "panels": [{"key": k, "title": t} for k, t in PANELS], "points": rows}


def plot_sweep(data: dict, path: Path) -> None:
    """One panel per indicator against the LA ratio, one line per preference (error bars: one
    standard error), base as a dashed reference; the top axis gives 1 + r (CFG / implicit PAD)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    on_axis = [p for p in data["points"] if p["ratio"] is not None]
    base = [p for p in data["points"] if p["ratio"] is None]
    prefs = sorted({p["pref"] for p in on_axis})
    fig, axes = plt.subplots(3, 4, figsize=(15, 10))
    for number, (ax, panel) in enumerate(zip(axes.flat, data["panels"], strict=False)):
        key = panel["key"]
        for pref in prefs:
            line = sorted((p for p in on_axis if p["pref"] == pref), key=lambda p: p["ratio"])
            ax.errorbar([p["ratio"] for p in line], [p["values"][key] for p in line],
                        yerr=[_zero_nan(p["sem"][key]) for p in line], marker="o", ms=3,
                        capsize=2, label=pref)
        for reference in base:
            ax.axhline(reference["values"][key], ls="--", lw=0.8, color="grey",
                       label="base (no preference)" if reference is base[0] else None)
        ax.set_title(f"indicator: {panel['title']}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("LA ratio r", fontsize=8)
        if number < 4:  # the top row: the same axis as CFG's guidance scale / PAD's w
            top = ax.secondary_xaxis("top", functions=(lambda r: r + 1.0, lambda s: s - 1.0))
            top.tick_params(labelsize=6)
            top.set_xlabel("1 + r", fontsize=7)
    axes.flat[0].legend(fontsize=7)
    model = ", ".join(sorted({p["model"] for p in data["points"]}))
    dataset = ", ".join(sorted({p["dataset"] for p in data["points"]}))
    n = max(p["n"] for p in data["points"])
    axis = AXES.get(data["axis"])
    swept = ""
    if axis is not None and axis.name != "ratio":
        native = sorted({p["settings"][axis.field] for p in on_axis if axis.field in p["settings"]})
        swept = f" ({axis.name} = {', '.join(f'{v:g}' for v in native)}, each at r = k)"
    fig.suptitle(f"Judge-free text indicators (descriptive, not quality scores) vs mixture "
                 f"strength, swept by {data['axis']}{swept}: {model}, {dataset}, {n} "
                 "questions\n"
                 f"top axis: CFG guidance_scale = implicit PAD w = 1 + r; Amulet(T=60, alpha="
                 f"lambda=2, eta=10) is r = 4.65", fontsize=10)
    # fixed margins: tight_layout would lay out 12 panels and their twin axes twice per save
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.06, top=0.86, wspace=0.28, hspace=0.5)
    save_figure(fig, path, dpi=85)  # keeps the 12-panel PNG under 200 KB


def _zero_nan(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def markdown_summary(data: dict, keys: Sequence[str] = ("length_tokens", "share_hitting_cap",
                                                        "distinct_2", "rep_2", "degenerate",
                                                        "vader_compound",
                                                        "flesch_reading_ease",
                                                        "mentions_preference")) -> str:
    """A table of the main indicators per point (base first, then by preference and ratio)."""
    header = ["preference", "method", "LA ratio r", "1 + r", "n", *keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in data["points"]:
        ratio = "base" if p["ratio"] is None else f"{p['ratio']:.3g}"
        scale = "" if p["ratio"] is None else f"{1 + p['ratio']:.3g}"
        cells = [p["pref"], p["method"], ratio, scale, str(p["n"])]
        cells += [f"{p['values'][k]:.3g}" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
