"""The JSON-lines run configs of ARGS and PAD: one run per line, keys rm_weight, topk, mode and
sample_temp, as in ARGS's `greedy_rm_1.5.jsonl` and PAD's `configs/*.config`, which load
unchanged. ARGS's mode "greedy_large" (the same argmax, candidates scored in chunks) is read as
"greedy"; a null sample_temp is 0.7 under mode "topk" and unused under
greedy. No torch here: configs are checked before any weights load.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

KEYS = ("rm_weight", "topk", "mode", "sample_temp")
MODE_ALIASES = {"greedy": "greedy", "greedy_large": "greedy", "topk": "topk"}
DEFAULT_SAMPLE_TEMP = 0.7  # the public codes' default temperature


@dataclass(frozen=True)
class GuidedRunConfig:
    """One line of a run config, validated; `line` is its 1-based line number in the file."""

    rm_weight: float
    topk: int
    mode: str  # "greedy" or "topk"
    sample_temp: float | None  # None under greedy
    line: int


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_line(text: str, line: int, source: str) -> GuidedRunConfig:
    """One JSON line -> a GuidedRunConfig; a UserError naming `source` and `line` otherwise."""
    where = f"{source} line {line}"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object with keys {', '.join(KEYS)}")
    missing = [k for k in KEYS if k not in record]
    unknown = sorted(k for k in record if k not in KEYS)
    if missing or unknown:
        problems = [f"missing key {k!r}" for k in missing] + [f"unknown key {k!r}" for k in unknown]
        raise UserError(
            f"{where}: {', '.join(problems)}; each line needs exactly {', '.join(KEYS)}"
        )
    weight, topk, mode, temp = (record[k] for k in KEYS)
    if not _is_number(weight) or not math.isfinite(weight):
        raise UserError(f"{where}: rm_weight must be a finite number, got {weight!r}")
    if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
        raise UserError(f"{where}: topk must be a whole number of at least 1, got {topk!r}")
    if mode not in MODE_ALIASES:
        raise UserError(f"{where}: unknown mode {mode!r}; use one of {', '.join(MODE_ALIASES)}")
    if temp is not None and (not _is_number(temp) or not math.isfinite(temp) or temp <= 0):
        raise UserError(f"{where}: sample_temp must be null or a positive number, got {temp!r}")
    mode = MODE_ALIASES[mode]
    if mode == "greedy":
        temp = None
    elif temp is None:
        temp = DEFAULT_SAMPLE_TEMP
    return GuidedRunConfig(float(weight), topk, mode, None if temp is None else float(temp), line)


def parse_run_configs(text: str, source: str = "run config") -> list[GuidedRunConfig]:
    """Every non-blank line of a JSON-lines run config, in order."""
    runs = [
        parse_line(row, number, source)
        for number, row in enumerate(text.splitlines(), start=1)
        if row.strip()
    ]
    if not runs:
        raise UserError(f"{source}: no runs in it (one JSON object per line expected)")
    return runs


def load_run_configs(path: str | Path) -> list[GuidedRunConfig]:
    """Read and validate a run config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot read run config {path}: {err.strerror or err}") from None
    return parse_run_configs(text, str(path))


def run_suffix(run: GuidedRunConfig) -> str:
    """A file-name suffix naming a run's settings, e.g. `w1.5_k10_greedy`, `w0.8_k10_topk_t0.7`."""
    suffix = f"w{run.rm_weight!r}_k{run.topk}_{run.mode}"
    if run.sample_temp is not None:
        suffix += f"_t{run.sample_temp!r}"
    return suffix


def run_suffixes(runs: list[GuidedRunConfig]) -> list[str]:
    """One distinct suffix per run, so the runs of a grid never write over each other.

    Each is `run_suffix(run)`; a line repeating the settings of an earlier one (e.g. "greedy"
    and "greedy_large") gets `_line{n}` appended.
    """
    seen: set[str] = set()
    suffixes = []
    for run in runs:
        suffix = run_suffix(run)
        if suffix in seen:
            suffix += f"_line{run.line}"
        seen.add(suffix)
        suffixes.append(suffix)
    return suffixes
