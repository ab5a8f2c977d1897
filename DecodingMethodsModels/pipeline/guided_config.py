"""The JSON-lines run configs of ARGS and PAD: one run per line, keys rm_weight, topk, mode and
sample_temp, as in ARGS's `greedy_rm_1.5.jsonl` and PAD's `configs/*.config`, which load
unchanged. ARGS's mode "greedy_large" (the same argmax, candidates scored in chunks) is read as
"greedy"; a null sample_temp is 0.7 under mode "topk" and unused under
greedy. No torch here: configs are checked before any weights load.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.rules.defaults import DEFAULT_SAMPLE_TEMP

KEYS = ("rm_weight", "topk", "mode", "sample_temp")
MODE_ALIASES = {"greedy": "greedy", "greedy_large": "greedy", "topk": "topk"}


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


SELF = "self"  # --rm_name for implicit PAD
DEFAULT_RM_WEIGHT = {"args": 1.5, "pad": 0.8}  # ARGS's greedy_rm_1.5, PAD's P-Soups weight


def guided_runs(config, method: str) -> list[tuple[str, GuidedRunConfig]]:
    """(file stem, settings) of every run of `method` ("args" or "pad") the command asks for.

    ARGS's and PAD's collect_model_outs.py read a line's sample_temp but never pass it on, so
    they sample at 0.7 whatever it says; `--public_sample_temp` does the same here."""
    if config.run_config is not None:
        runs = [_public_temp(config, run) for run in load_run_configs(config.run_config)]
        return [(f"{method}_{suffix}", run) for suffix, run in zip(run_suffixes(runs), runs,
                                                                     strict=True)]
    weight = DEFAULT_RM_WEIGHT[method] if config.rm_weight is None else config.rm_weight
    temp = config.sample_temp if config.mode == "topk" else None
    run = GuidedRunConfig(float(weight), config.topk, config.mode, temp, line=0)
    return [(method, _public_temp(config, run))]


def _public_temp(config, run: GuidedRunConfig) -> GuidedRunConfig:
    if config.public_sample_temp and run.mode == "topk":
        return replace(run, sample_temp=DEFAULT_SAMPLE_TEMP)
    return run


def guided_parameters(config, run: GuidedRunConfig, rm_dtype: str | None) -> dict:
    """What changes the tokens of a reward-guided run, for its fingerprint: the guide and its
    resolved dtype (none for `self`), the sha256 of a PersRM's value-head file when it has one,
    w, k, the mode, the temperature and seed when sampling, and whether EOS stops it. Not the
    guide's device nor --rm_batch_size."""
    params = {"rm_name": config.rm_name, "rm_weight": run.rm_weight, "topk": run.topk,
              "mode": run.mode, "ignore_eos": config.ignore_eos}
    if run.mode == "topk":
        params.update(sample_temp=run.sample_temp, seed=config.seed)
    if config.rm_name != SELF:
        params["rm_dtype"] = rm_dtype
        if config.guided_methods == ["pad"]:
            digest = value_head_sha256(config.rm_name)
            if digest is not None:  # absent without a head: those runs' fingerprints stay
                params["rm_value_head_sha256"] = digest
            if config.pad_rule != "auto":  # auto's rule follows from the two models' names
                params["pad_rule"] = config.pad_rule
    return params


def value_head_sha256(rm_name: str) -> str | None:
    """The sha256 of the value-head file PAD.py would apply to the PersRM `rm_name`, or None."""
    from DecodingMethodsModels.models.loading import resolve_model
    from DecodingMethodsModels.models.value_head import find_value_head

    source = resolve_model(rm_name)
    path = None if source.gguf_file else find_value_head(source.path)
    if path is None:
        return None
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.cache
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    """Hashed once per version of a file: every run of a grid asks for the same one."""
    from DecodingMethodsModels.models.value_head import file_sha256

    return file_sha256(Path(path))


def guide_dtype(config) -> str:
    return config.dtype if config.rm_dtype is None else config.rm_dtype
