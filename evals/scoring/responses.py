"""Read and validate ``{output_dir}/{pref}/{model}/{dataset}/{method}.json`` response files.

Each file is a JSON list of ``{"index", "question", "preference", "response"}`` records.
Methods of one run are compared on the question indices they share, whose question and
preference text must agree; anything else is reported as one line naming the file and the fix.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from evals.errors import EvalError
from evals.scoring.run_settings import read_fingerprints, settings_problems

DEFAULT_METHODS = ("base", "pref", "beam", "la", "amulet")
_FIELDS = {"index": int, "question": str, "preference": str, "response": str}


@dataclass(frozen=True)
class RunKey:
    """One evaluated setting: a preference, a generating model and a dataset."""

    pref: str
    model: str
    dataset: str

    def parts(self) -> tuple[str, str, str]:
        """``(pref, model, dataset)``: the relative directory of the run."""
        return (self.pref, self.model, self.dataset)


@dataclass(frozen=True)
class Item:
    """One question of a run, shared by all methods."""

    index: int
    question: str
    preference: str


@dataclass(frozen=True)
class RunResponses:
    """Validated responses of one run: ``texts[method][index]`` for every item."""

    key: RunKey
    items: tuple[Item, ...]
    texts: dict[str, dict[int, str]]
    settings_problems: tuple[str, ...] = ()  # generation settings that differ between methods
    # the public codes' output records as read (``records[method][index]``), for --scoring
    records: dict[str, dict[int, dict]] | None = None

    @property
    def methods(self) -> list[str]:
        return list(self.texts)


def split_methods(spec: str, flag: str = "--methods") -> list[str]:
    """Parse ``"base,pref, la"`` into a list without blanks; duplicates are an error.

    >>> split_methods("base, pref,,la")
    ['base', 'pref', 'la']
    """
    names = [m.strip() for m in spec.split(",") if m.strip()]
    duplicates = sorted({m for m in names if names.count(m) > 1})
    if duplicates:
        raise EvalError(f"{flag} lists {', '.join(duplicates)} more than once")
    if not names:
        raise EvalError(f"{flag} is empty; give comma-separated names")
    return names


def _listing(directory: Path, suffix: str = "") -> str:
    names = sorted(
        p.name for p in directory.iterdir() if (p.is_dir() if not suffix else p.suffix == suffix)
    )
    return ", ".join(names) if names else "nothing"


def run_dir(output_dir: Path, key: RunKey) -> Path:
    """The directory of a run, or an error naming what exists at the first missing level."""
    if not output_dir.is_dir():
        raise EvalError(f"output dir {output_dir} does not exist (pass --output_dir)")
    current = output_dir
    for flag, part in zip(("--pref_name", "--model_name", "--eval_data"), key.parts(), strict=True):
        nxt = current / part
        if not nxt.is_dir():
            raise EvalError(f"no {nxt} for {flag} {part!r}; {current} holds: {_listing(current)}")
        current = nxt
    return current


def read_json_list(path: Path, what: str) -> list:
    """The non-empty JSON list in `path`; an EvalError naming the file (and `what` the list
    should hold) when it cannot be read or is something else."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise EvalError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(records, list) or not records:
        raise EvalError(f"{path} must be a non-empty JSON list of {what}")
    return records


def _read_method_file(path: Path) -> list[dict]:
    records = read_json_list(path, "response records")
    for number, record in enumerate(records):
        if not isinstance(record, dict):
            raise EvalError(f"{path}: record {number} is not a JSON object")
        for name, kind in _FIELDS.items():
            value = record.get(name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise EvalError(
                    f"{path}: record {number} needs {name!r} as {kind.__name__}, got {value!r:.60}"
                )
    return records


def _check_same_texts(reference: dict[int, dict], records: dict[int, dict], ref: str,
                      other: str) -> None:
    """The questions both methods answered must read the same (else: different runs)."""
    for index in sorted(set(reference) & set(records)):
        for name in ("question", "preference"):
            if records[index][name] != reference[index][name]:
                raise EvalError(
                    f"index {index}: {name} differs between {ref} and {other}; "
                    "the files come from different runs"
                )


def partial_methods(covered: dict[str, set[int]]) -> list[str]:
    """The methods that miss a question most methods answered: the questions answered by more
    than half of the methods are the setting's own, and a method lacking one of them is
    partial (a short trial run beside complete ones).

    >>> partial_methods({"base": {0, 1, 2, 3}, "amulet": set(range(12)), "pad": {0, 1}})
    ['pad']
    >>> partial_methods({"base": {0, 1, 2, 3}, "amulet": set(range(12))})
    []
    """
    counts: dict[int, int] = {}
    for indices in covered.values():
        for index in indices:
            counts[index] = counts.get(index, 0) + 1
    common = {i for i, n in counts.items() if 2 * n > len(covered)}
    return [m for m, indices in covered.items() if not common <= indices]


def _read_records(directory: Path, method: str) -> dict[int, dict]:
    path = directory / f"{method}.json"
    records: dict[int, dict] = {}
    for record in _read_method_file(path):
        if record["index"] in records:
            raise EvalError(f"{path}: index {record['index']} appears twice")
        records[record["index"]] = record
    return records


def load_run(output_dir: Path, key: RunKey, methods: list[str],
             skip_partial: bool = False) -> RunResponses:
    """Load and cross-check every method's responses of one run, on the questions they share.

    Methods that answered different numbers of questions (a method run with a smaller
    ``--limit``, or one still running) are compared on the questions every one of them
    answered, said in one line on stderr. With ``skip_partial`` (the methods were found, not
    named) a method missing questions most methods answered (:func:`partial_methods`) is left
    out instead, with a line saying so. No shared question at all is an error.
    """
    directory = run_dir(output_dir, key)
    missing = [m for m in methods if not (directory / f"{m}.json").is_file()]
    if missing:
        raise EvalError(
            f"missing {', '.join(f'{m}.json' for m in missing)} in {directory}; "
            f"found: {_listing(directory, '.json')} (pass --methods to choose)"
        )
    by_method = {method: _read_records(directory, method) for method in methods}
    where = "/".join(key.parts())
    covered = {m: set(records) for m, records in by_method.items()}
    partial = partial_methods(covered) if skip_partial else []
    if len(partial) < len(methods):  # never all of them: then the shared questions decide
        for method in partial:
            del by_method[method]
            print(f"note: {where}: skipping {method} ({len(covered[method])} questions, fewer "
                  "than the other methods share; name it in --methods to compare on its "
                  "questions)", file=sys.stderr)
        methods = list(by_method)
    reference_method = methods[0]
    reference = by_method[reference_method]
    for method in methods[1:]:
        _check_same_texts(reference, by_method[method], reference_method, method)
    shared = set.intersection(*(set(records) for records in by_method.values()))
    sizes = {m: len(records) for m, records in by_method.items()}
    if not shared:
        listed = ", ".join(f"{m} {n}" for m, n in sizes.items())
        raise EvalError(f"{where}: the methods share no question ({listed} questions); "
                        "regenerate them on the same questions")
    if any(n != len(shared) for n in sizes.values()):
        more = ", ".join(f"{m} has {n}" for m, n in sizes.items() if n != len(shared))
        print(f"note: {where}: comparing {len(methods)} methods on the {len(shared)} questions "
              f"they all answered ({more})", file=sys.stderr)
    items = tuple(
        Item(i, reference[i]["question"], reference[i]["preference"]) for i in sorted(shared)
    )
    texts = {m: {i: recs[i]["response"] for i in sorted(shared)}
             for m, recs in by_method.items()}
    problems = tuple(settings_problems(read_fingerprints(directory, methods)))
    for problem in problems:
        print(f"warning: {directory}: {problem}", file=sys.stderr)
    return RunResponses(key, items, texts, problems)


def found_methods(directory: Path) -> list[str]:
    """The methods whose ``{method}.json`` lies in a run directory (sidecars left out): the
    paper's five in their order, then the others by name."""
    names = sorted(p.name.removesuffix(".json") for p in directory.glob("*.json")
                   if not p.name.endswith(".meta.json"))
    return [m for m in DEFAULT_METHODS if m in names] + [
        m for m in names if m not in DEFAULT_METHODS]


def discover_runs(
    output_dir: Path,
    methods: list[str] | None,
    prefs: list[str] | None = None,
    models: list[str] | None = None,
    datasets: list[str] | None = None,
) -> tuple[list[RunKey], list[str]]:
    """Find ``pref/model/dataset`` directories holding every method file.

    Returns ``(complete runs, notes on directories skipped for missing methods)``;
    ``None`` filters mean "all", and ``methods=None`` takes every directory holding at least
    one method file.
    """
    if not output_dir.is_dir():
        raise EvalError(f"output dir {output_dir} does not exist (pass --output_dir)")
    runs, skipped = [], []
    for dataset_dir in sorted(output_dir.glob("*/*/*")):
        if not dataset_dir.is_dir():
            continue
        pref, model, dataset = dataset_dir.relative_to(output_dir).parts
        if (
            (prefs and pref not in prefs)
            or (models and model not in models)
            or (datasets and dataset not in datasets)
        ):
            continue
        if methods is None:
            if found_methods(dataset_dir):
                runs.append(RunKey(pref, model, dataset))
            continue
        missing = [m for m in methods if not (dataset_dir / f"{m}.json").is_file()]
        if missing:
            skipped.append(f"{dataset_dir} (no {', '.join(missing)})")
        else:
            runs.append(RunKey(pref, model, dataset))
    return runs, skipped
