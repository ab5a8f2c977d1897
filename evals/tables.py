"""Render lists of row dicts as CSV or GitHub markdown (pure string functions)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence


def _cell(value: object, digits: int) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def to_csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """CSV with a header row; floats keep full precision (``repr``).

    >>> to_csv([{"a": 1, "b": 0.5}], ["a", "b"])
    'a,b\\n1,0.5\\n'
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(c, "") for c in columns])
    return buffer.getvalue()


def to_markdown(rows: Sequence[dict], columns: Sequence[str], digits: int = 3) -> str:
    """A markdown table; floats rounded to ``digits``; ``|`` inside cells escaped.

    >>> print(to_markdown([{"m": "la", "x": 0.25}], ["m", "x"], digits=2))
    | m | x |
    |---|---|
    | la | 0.25 |
    """
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_cell(row.get(c, ""), digits).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
