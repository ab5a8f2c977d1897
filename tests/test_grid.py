"""A grid run (methods x preferences x datasets) loads the model once, writes every file under
one overall progress bar, and a rerun skips every complete run without loading anything."""

from __future__ import annotations

import time

import pytest
from cli_helpers import main_in_process, run_main, tree_state, write_dataset

import DecodingMethodsModels.models.loading as loading

METHODS, PREFS, DATASETS = ("base", "la"), ("creative", "concise"), ("alpha", "beta")


@pytest.fixture
def grid(tmp_path, tiny_model_dirs) -> tuple[list[str], list]:
    data = tmp_path / "data"
    write_dataset(data, "alpha", ["Why do cats purr?", "What is rain?", "Name a colour."])
    write_dataset(data, "beta", ["Say hello.", "Count to three."])
    model = tiny_model_dirs["qwen2"]
    args = ["--model_name", str(model), "--data_dir", str(data), "--output_dir",
            str(tmp_path / "out"), "--method", ",".join(METHODS), "--pref_name", ",".join(PREFS),
            "--eval_data", ",".join(DATASETS), "--max_new_tokens", "3", "--batch_size", "2",
            "--device", "cpu"]
    finals = [tmp_path / "out" / p / model.name / d / f"{m}.json"
              for p in PREFS for d in DATASETS for m in METHODS]
    return args, finals


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    calls = []
    real = loading.load_model

    def counting(source, *args, **kwargs):
        calls.append(source.path)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(loading, "load_model", counting)
    return calls


class RecordingBar:
    """Stands in for tqdm: records the bars made and what they counted."""

    made: list[RecordingBar] = []

    def __init__(self, total=None, **kwargs):
        self.total, self.count, self.kwargs = total, 0, kwargs
        RecordingBar.made.append(self)

    def update(self, n):
        self.count += n

    def set_description(self, desc):
        self.kwargs["desc"] = desc

    @staticmethod
    def write(message, file=None):
        print(message, file=file)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_grid_writes_all_eight_files_loading_the_model_once(grid, loads, monkeypatch):
    import tqdm

    args, finals = grid
    RecordingBar.made = []
    monkeypatch.setattr(tqdm, "tqdm", RecordingBar)
    code, err = main_in_process(args)
    assert code == 0, err
    assert all(f.is_file() and f.with_suffix(".meta.json").is_file() for f in finals)
    assert len(loads) == 1
    # stderr is no terminal here: no bar, but one progress report over the eight runs, whose
    # last line counts every question of them
    assert RecordingBar.made == []
    total = len(PREFS) * len(METHODS) * (3 + 2)
    progress = [line for line in err.splitlines() if " questions, " in line]
    assert progress and f": {total}/{total} questions, " in progress[-1], progress
    assert [f"[{i}/8]" in err for i in range(1, 9)] == [True] * 8
    assert err.count("wrote ") == 8


def test_rerun_of_a_complete_grid_skips_everything_and_loads_nothing(grid, loads):
    args, finals = grid
    code, err = main_in_process(args)
    assert code == 0, err
    before = tree_state(finals[0].parents[3])
    loads.clear()

    code, err = main_in_process(args)
    assert code == 0, err
    assert "8 of 8 runs already complete: skipped" in err
    assert loads == []
    assert tree_state(finals[0].parents[3]) == before

    started = time.monotonic()
    cli = run_main(args)  # the same through the command line: no model, no torch needed
    assert cli.returncode == 0, cli.stderr
    assert cli.stderr.strip() == "8 of 8 runs already complete: skipped"
    assert time.monotonic() - started < 30
    assert tree_state(finals[0].parents[3]) == before


def test_rerun_does_only_the_missing_runs(grid, loads):
    args, finals = grid
    code, err = main_in_process(args)
    assert code == 0, err
    missing = finals[1::3]
    kept = {f: f.stat().st_mtime_ns for f in finals if f not in missing}
    redo = {f: f.read_bytes() for f in missing}
    for f in missing:
        f.unlink()

    code, err = main_in_process(args)
    assert code == 0, err
    assert f"{8 - len(missing)} of 8 runs already complete: skipped" in err
    assert {f: f.stat().st_mtime_ns for f in kept} == kept
    assert {f: f.read_bytes() for f in missing} == redo
