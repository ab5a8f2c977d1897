"""The win-rate figure keeps its whole title (model and dataset names can be long) inside the
figure, clear of the legend."""

from __future__ import annotations

import pytest

from evals.judge.plots import plot_win_tie_lose, win_tie_lose_figure

ROWS = [{"label": f"amulet vs {b}", "win_rate": 0.5, "tie_rate": 0.2, "lose_rate": 0.3}
        for b in ("base", "pref", "beam", "la")]
LONG = ("GPT judge (gpt-4o-2024-05-13): creative / Llama-3.1-8B-Instruct / "
        "personal_preference_eval_preference_data")


@pytest.mark.parametrize("rows", [ROWS, ROWS[:1]], ids=["four-bars", "one-bar"])
def test_a_long_title_fits_in_the_figure(rows):
    import matplotlib.pyplot as plt

    fig = win_tie_lose_figure(rows, LONG)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        title = fig.axes[0].title
        box = title.get_window_extent(renderer)
        assert 0 <= box.x0 and box.x1 <= fig.bbox.width
        assert 0 <= box.y0 and box.y1 <= fig.bbox.height
        assert title.get_text().replace("\n", " ") == LONG  # wrapped, nothing dropped
        legend = fig.legends[0].get_window_extent(renderer)
        assert not legend.overlaps(box)
        assert legend.y1 <= fig.axes[0].xaxis.label.get_window_extent(renderer).y0
    finally:
        plt.close(fig)


def test_the_png_is_written(tmp_path):
    path = tmp_path / "sub" / "gpt_win_rate.png"
    plot_win_tie_lose(ROWS, LONG, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.parent.glob(".*tmp*"))
