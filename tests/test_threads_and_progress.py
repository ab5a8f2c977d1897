"""The default thread policy (`--num_threads auto`) as a pure function of load and cores, and
the progress main.py shows without a terminal: a line per batch with questions done, tokens/s
and the time left."""

from __future__ import annotations

import doctest
import io
import re

import pytest
from cli_helpers import cli_env, demo_data, gen_args, run_main

from DecodingMethodsModels.pipeline import progress, threads
from DecodingMethodsModels.pipeline.progress import Progress, progress_line
from DecodingMethodsModels.pipeline.threads import (
    ThreadChoice,
    auto_thread_count,
    choose_threads,
    threads_set,
)


def test_the_docstring_examples_hold():
    assert doctest.testmod(threads).failed == 0
    assert doctest.testmod(progress).failed == 0


@pytest.mark.parametrize(("cores", "load", "default", "expected"), [
    (2, 0.0, 2, 2),   # idle: torch's default
    (2, 0.49, 2, 2),  # background noise still rounds to both cores
    (2, 0.51, 2, 1),  # one core's worth of another job: one thread
    (2, 1.0, 2, 1),
    (2, 4.0, 2, 1),   # the busy machine of the 524 s run: one thread, never zero
    (2, 40.0, 2, 1),
    (16, 0.0, 8, 8),  # never more than torch's default (physical cores)
    (16, 10.0, 8, 6),
    (1, 0.0, 1, 1),
])
def test_auto_takes_the_free_cores_rounded_at_least_one_at_most_torchs(cores, load, default,
                                                                       expected):
    assert auto_thread_count(cores, load, default) == expected
    assert auto_thread_count(cores, load, default) == min(
        default, max(1, int(cores - load + 0.5)))  # the docstring's formula


def test_auto_never_gives_more_threads_as_the_load_rises():
    counts = [auto_thread_count(8, load / 10, 8) for load in range(0, 120)]
    assert counts == sorted(counts, reverse=True) and counts[0] == 8 and counts[-1] == 1


@pytest.mark.parametrize("bad", [(0, 1.0, 2), (2, -1.0, 2), (2, 1.0, 0)])
def test_auto_refuses_impossible_inputs(bad):
    with pytest.raises(ValueError):
        auto_thread_count(*bad)


def _machine(monkeypatch, load: float, cores: int, torch_threads: int, **env: str):
    import torch

    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(threads, "busy_cpus", lambda: None)  # as where /proc/stat is missing
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: torch_threads)
    for name in threads.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_choose_applies_the_policy_to_this_machine(monkeypatch):
    _machine(monkeypatch, load=4.2, cores=2, torch_threads=2)
    busy = choose_threads(None)
    assert busy.count == 1 and "load average 4.2 on 2 cores" in busy.reason
    _machine(monkeypatch, load=0.1, cores=2, torch_threads=2)
    assert choose_threads(None).count is None  # idle: torch's own count is kept
    assert choose_threads(3) == ThreadChoice(3, "3 (--num_threads)")  # asked for: obeyed


def test_the_cpus_busy_now_win_over_a_lagging_load_average(monkeypatch):
    # a run that just ended still holds the 1-minute load average near 1 on 2 cores
    _machine(monkeypatch, load=1.0, cores=2, torch_threads=2)
    monkeypatch.setattr(threads, "busy_cpus", lambda: 0.05)
    idle = choose_threads(None)
    assert idle.count is None and "CPUs busy now 0.1 on 2 cores" in idle.reason
    monkeypatch.setattr(threads, "busy_cpus", lambda: 1.8)
    assert choose_threads(None).count == 1


def test_busy_cpus_reads_this_machine():
    busy = threads.busy_cpus(0.05)
    assert busy is None or 0.0 <= busy <= (threads.os.cpu_count() or 1) + 1e-9


@pytest.mark.parametrize("before, after, cpus, busy", [
    ([0, 0, 0, 0, 0], [0, 0, 0, 100, 0], 2, 0.0),  # all idle
    ([0, 0, 0, 0, 0], [80, 10, 10, 0, 0], 2, 2.0),  # all busy
    ([5, 0, 0, 5, 0], [45, 0, 5, 40, 20], 4, 1.8),  # iowait counts as idle
    ([1, 1, 1, 1, 1], [1, 1, 1, 1, 1], 2, 0.0),  # no time passed
])
def test_busy_from_stat_is_the_formula(before, after, cpus, busy):
    assert threads.busy_from_stat(before, after, cpus) == pytest.approx(busy)


def test_a_thread_variable_of_the_user_or_a_launcher_wins_over_auto(monkeypatch):
    _machine(monkeypatch, load=9.0, cores=2, torch_threads=2, OMP_NUM_THREADS="2")
    choice = choose_threads(None)
    assert choice.count is None and "OMP_NUM_THREADS" in choice.reason


def test_threads_are_given_back_after_the_run():
    import torch

    before = torch.get_num_threads()
    with threads_set(ThreadChoice(1, "test")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with threads_set(ThreadChoice(None, "kept")):
        assert torch.get_num_threads() == before


def test_num_threads_auto_parses_as_the_default():
    from config import config_from_args

    assert config_from_args(["--num_threads", "auto"]).num_threads is None
    assert config_from_args([]).num_threads is None
    assert config_from_args(["--num_threads", "3"]).num_threads == 3


def test_without_a_terminal_each_batch_is_a_line_with_rate_and_time_left():
    clock = iter([0.0, 10.0, 30.0]).__next__
    out = io.StringIO()
    with Progress(total=6, show=True, stream=out, clock=clock) as bar:
        bar.set_description("[1/1] run")
        bar.update(2)
        bar.batch(50)
        bar.update(4)
        bar.batch(100)
    assert out.getvalue().splitlines() == [
        "[1/1] run: 2/6 questions, 5.0 tokens/s, about 20 s left",
        "[1/1] run: 6/6 questions, 5.0 tokens/s, done",
    ]
    quiet = io.StringIO()
    with Progress(total=6, show=False, stream=quiet) as bar:
        bar.update(6)
        bar.batch(10)
        bar.write("not rank 0")
    assert quiet.getvalue() == ""


def test_progress_line_states_its_formula():
    assert progress_line("r", 3, 12, 90, 30.0) == ("r: 3/12 questions, 3.0 tokens/s, about "
                                                   "1 min 30 s left")
    assert progress_line("r", 0, 12, 0, 0.0).endswith("tokens/s not known yet, time left not "
                                                      "known yet")


LINE = re.compile(r"^\[(\d)/2\] (\w+) creative demo: (\d+)/8 questions, "
                  r"[\d.]+ tokens/s, (about .+ left|done)$")


def test_main_py_with_stderr_piped_prints_a_line_per_batch(tmp_path_factory, tiny_model_dirs,
                                                           tmp_path):
    """pref decodes batch by batch, amulet as a stream: both report each written batch."""
    data = demo_data(tmp_path_factory)
    args = gen_args(tiny_model_dirs["llama"], data, tmp_path / "out", "--limit", "4",
                    method="pref,amulet", max_new_tokens=4, batch_size=2)
    done = run_main(args, env=cli_env())  # stderr is a pipe here, not a terminal
    assert done.returncode == 0, done.stderr
    lines = [m.groups() for m in map(LINE.match, done.stderr.splitlines()) if m]
    assert [(run, method, int(count)) for run, method, count, _ in lines] == [
        ("1", "pref", 2), ("1", "pref", 4), ("2", "amulet", 6), ("2", "amulet", 8)]
    assert lines[-1][3] == "done" and lines[0][3].startswith("about ")
    assert "torch threads: 1 (torch's, following OMP_NUM_THREADS)" in done.stderr
    assert "\r" not in done.stderr  # no progress bar in a pipe
