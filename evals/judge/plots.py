"""The paper-style stacked win / tie / lose horizontal bar chart (matplotlib, Agg backend)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

COLOURS = {"win": "#4c9a6a", "tie": "#c9c9c9", "lose": "#d0605e"}
FIGURE_WIDTH = 7.0  # inches
TITLE_CHARS = 70  # characters of a 10 pt title line that fit in FIGURE_WIDTH
LEGEND_INCHES = 0.3


def plot_win_tie_lose(rows: Sequence[dict], title: str, path: Path) -> None:
    """The chart of :func:`win_tie_lose_figure`, written to ``path`` (PNG) via a temporary
    file."""
    import matplotlib.pyplot as plt

    fig = win_tie_lose_figure(rows, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=150)
    plt.close(fig)
    tmp.replace(path)


def win_tie_lose_figure(rows: Sequence[dict], title: str):
    """One bar per row (``label``, ``win_rate``, ``tie_rate``, ``lose_rate`` in [0, 1]).

    Segments are stacked left to right win | tie | lose and labelled in percent when wide
    enough to hold the label. Rows with ``win_rate_ties_half`` and ``lc_win_rate`` get both
    marked on their bar, side by side: the raw win rate with ties as half (a bar) and the
    length-controlled one (a diamond). Returns the matplotlib figure (Agg backend).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row["label"] for row in rows]
    # a long title (model and dataset names) is wrapped to the figure's width, not cut off
    title_lines = textwrap.wrap(title, TITLE_CHARS) or [""]
    height = 0.55 * len(rows) + 1.2 + 0.2 * len(title_lines)
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH, height))
    left = [0.0] * len(rows)
    for part in ("win", "tie", "lose"):
        rates = [float(row[f"{part}_rate"]) for row in rows]
        widths = [0.0 if math.isnan(r) else 100.0 * r for r in rates]  # no valid judgment
        bars = ax.barh(labels, widths, left=left, color=COLOURS[part], label=part.capitalize())
        for bar, width in zip(bars, widths, strict=True):
            if width >= 6.0:
                ax.text(
                    bar.get_x() + width / 2, bar.get_y() + bar.get_height() / 2,
                    f"{width:.0f}%", ha="center", va="center", fontsize=8,
                )
        left = [a + b for a, b in zip(left, widths, strict=True)]
    _mark_rates(ax, rows)
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of valid judgments")
    ax.invert_yaxis()  # first row on top, as in a table
    ax.set_title("\n".join(title_lines), fontsize=10)
    # the legend in its own strip at the bottom of the figure, clear of title and axis label
    fig.legend(ncol=5, loc="lower center", frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, LEGEND_INCHES / height, 1, 1))
    return fig


def _mark_rates(ax, rows: Sequence[dict]) -> None:
    """The raw (ties as half) and length-controlled win rates as markers on each bar."""
    marks = (("win_rate_ties_half", "|", "raw, ties half"), ("lc_win_rate", "D",
                                                             "length-controlled"))
    for key, marker, label in marks:
        points = [(100.0 * float(row[key]), k) for k, row in enumerate(rows)
                  if key in row and not math.isnan(float(row[key]))]
        if points:
            style = ({"facecolors": "none", "edgecolors": "black"} if marker == "D"
                     else {"color": "black"})
            ax.scatter(*zip(*points, strict=True), marker=marker, s=60, zorder=3, label=label,
                       **style)
