"""Reading and validating an evaluation dataset: a JSON list of {"index", "question"} records."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from DecodingMethodsModels.errors import UserError

BENCHMARKS = (
    "HelpSteer_train",
    "UltraFeedback_truthful_qa",
    "UltraFeedback_ultrachat",
    "personal_preference_eval_preference_data",
)
GET_BENCHMARKS = (
    "the paper's benchmark files: python data/fetch_benchmarks.py (puts them in data/), or "
    "--data_dir DIR holding copies"
)


@dataclass(frozen=True)
class Question:
    index: int
    question: str


@dataclass(frozen=True)
class Dataset:
    name: str
    path: Path
    sha256: str
    questions: tuple[Question, ...]


def available_datasets(data_dir: Path) -> list[str]:
    return sorted(p.stem for p in data_dir.glob("*.json")) if data_dir.is_dir() else []


def dataset_path(data_dir: Path, name: str) -> Path:
    """`{data_dir}/{name}.json`, refusing names that would leave the data directory."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or _has_control(name):
        raise UserError(f"--eval_data {name!r} must be a plain dataset name, not a path")
    if not data_dir.is_dir():
        what = "is not a folder" if data_dir.exists() else "does not exist"
        raise UserError(f"the data folder {data_dir} (--data_dir) {what}; for {GET_BENCHMARKS}")
    path = data_dir / f"{name}.json"
    if not path.is_file():
        have = ", ".join(available_datasets(data_dir)) or "none"
        raise UserError(
            f"dataset {name!r} not found in {data_dir}/ (available: {have}); for {GET_BENCHMARKS}"
        )
    return path


def load_dataset(data_dir: Path, name: str, limit: int | None = None) -> Dataset:
    """Load, validate and optionally cut to the first `limit` records."""
    path = dataset_path(data_dir, name)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        records = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON: {err}") from None
    questions = parse_records(records, str(path))
    if limit is not None:
        questions = questions[:limit]
    return Dataset(name, path, hashlib.sha256(raw).hexdigest(), tuple(questions))


def parse_records(records: object, where: str) -> list[Question]:
    """Validate records; `index` must be present on all of them or on none (then: position)."""
    if not isinstance(records, list):
        raise UserError(f"{where} must hold a JSON list of records, found {type(records).__name__}")
    if not records:
        raise UserError(f"{where} holds no records")
    with_index = sum(isinstance(r, dict) and "index" in r for r in records)
    questions, seen = [], set()
    for position, record in enumerate(records):
        if not isinstance(record, dict):
            raise UserError(f"{where}: record {position} is not a JSON object")
        question = record.get("question")
        if question is None:
            raise UserError(f"{where}: record {position} has no 'question'")
        if not isinstance(question, str) or not question.strip():
            raise UserError(f"{where}: record {position} has an empty or non-string 'question'")
        index = record.get("index", position) if with_index else position
        if with_index and "index" not in record:
            raise UserError(f"{where}: record {position} has no 'index' while others have one")
        if isinstance(index, bool) or not isinstance(index, int):
            raise UserError(f"{where}: record {position} has a non-integer 'index': {index!r}")
        if index in seen:
            raise UserError(f"{where}: record {position} repeats index {index}")
        seen.add(index)
        questions.append(Question(index, question))
    return questions


def _has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)
