"""Resume: kill -9 and Ctrl-C lose at most the batch in flight, a rerun completes the file
byte for byte, partial results of another configuration are refused, a complete file is left
alone unless --overwrite, and the partial store survives torn and damaged lines."""

from __future__ import annotations

import json
import shlex
import signal
from pathlib import Path

import pytest
from cli_helpers import (
    QUESTIONS,
    batch_lines,
    finish,
    gen_args,
    main_cmd,
    main_in_process,
    run_files,
    run_main,
    start,
    tree_state,
    wait_for_batches,
)

from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.pipeline.outputs import PartialStore

N_BATCHES = len(QUESTIONS) // 2  # gen_args' batch size is 2


def test_sigkill_midway_then_rerun_gives_the_uninterrupted_file(model, data, reference, tmp_path):
    args = gen_args(model, data, tmp_path)
    final, directory = run_files(tmp_path, model)
    part = directory / "amulet.part0.jsonl"
    proc = start(main_cmd(args))
    wait_for_batches(part, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert not final.exists()
    saved = batch_lines(part)
    assert 2 <= saved < N_BATCHES, "the kill did not land mid-way"

    code, err = main_in_process(args)  # the same command again
    assert code == 0, err
    assert f"{len(QUESTIONS) - 2 * saved} of {len(QUESTIONS)} questions" in err
    assert final.read_bytes() == reference
    assert sorted(p.name for p in directory.iterdir()) == ["amulet.json", "amulet.meta.json"]


def test_ctrl_c_saves_finished_batches_and_prints_a_working_resume_command(
    model, data, reference, tmp_path
):
    final, directory = run_files(tmp_path, model)
    proc = start(main_cmd(gen_args(model, data, tmp_path, "--overwrite")))
    wait_for_batches(directory / "amulet.part0.jsonl", 1, proc)
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130
    assert "Traceback" not in err
    hint = err.strip().splitlines()[-1]
    assert hint.startswith("interrupted: the finished batches are saved; to resume, rerun: ")
    assert not final.exists() and batch_lines(directory / "amulet.part0.jsonl") >= 1

    command = shlex.split(hint.split("rerun: ", 1)[1])
    assert command[:2] == ["python", "main.py"] and "--overwrite" not in command
    code, err = main_in_process(command[2:])
    assert code == 0, err
    assert final.read_bytes() == reference


def test_batches_written_by_any_rank_of_an_earlier_job_are_reused(
    model, data, reference, tmp_path, monkeypatch
):
    args = gen_args(model, data, tmp_path)
    final, directory = run_files(tmp_path, model)
    real, calls = PartialStore.append, []

    def stop_after_two(self, batch, records, **stats):
        calls.append(batch)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(self, batch, records, **stats)

    monkeypatch.setattr(PartialStore, "append", stop_after_two)
    code, err = main_in_process(args)
    assert code == 130 and "to resume" in err
    monkeypatch.setattr(PartialStore, "append", real)
    # as if rank 3 of a four-process job had written them
    (directory / "amulet.part0.jsonl").rename(directory / "amulet.part3.jsonl")

    code, err = main_in_process(args)
    assert code == 0, err
    assert f"{len(QUESTIONS) - 4} of {len(QUESTIONS)} questions" in err
    assert final.read_bytes() == reference
    assert sorted(p.name for p in directory.iterdir()) == ["amulet.json", "amulet.meta.json"]


def partial_file_of(args: list[str], batches: list[int]) -> Path:
    """Write the partial file that `args` would leave after finishing `batches`."""
    from config import config_from_args
    from DecodingMethodsModels.models.loading import resolve_model
    from DecodingMethodsModels.pipeline.plan import fingerprint, plan_runs

    config = config_from_args(args)
    short = resolve_model(config.model_name).short_name
    (planned,) = plan_runs(config, short)
    with PartialStore(planned.part_path(0), fingerprint(config, planned, short)) as store:
        for b in batches:
            store.append(b, records(b))
    return planned.part_path(0)


def test_partial_results_of_another_configuration_are_refused_untouched(model, data, tmp_path):
    partial_file_of(gen_args(model, data, tmp_path, max_new_tokens=8), [0, 1])
    before = tree_state(tmp_path)

    refused = run_main(gen_args(model, data, tmp_path, "--alpha", "1.5", max_new_tokens=16))
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("error:")] == lines[-1:]
    message = lines[-1]
    assert "another configuration" in message and "--overwrite" in message
    assert "max_new_tokens: 8 -> 16" in message and "alpha: 2.0 -> 1.5" in message
    assert "Traceback" not in refused.stderr
    assert tree_state(tmp_path) == before


def test_a_complete_file_of_other_settings_is_refused_naming_them_unless_overwrite(
    model, data, reference, tmp_path
):
    final, directory = run_files(tmp_path, model)
    code, err = main_in_process(gen_args(model, data, tmp_path))
    assert code == 0, err
    before = tree_state(tmp_path)

    code, err = main_in_process(gen_args(model, data, tmp_path))  # same settings: complete
    assert code == 0, err
    assert "1 of 1 runs already complete: skipped" in err
    assert tree_state(tmp_path) == before

    code, err = main_in_process(gen_args(model, data, tmp_path, "--alpha", "1.5"))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "was made with other settings" in err and "alpha: 2.0 -> 1.5" in err
    assert "amulet_ratio" in err and "--overwrite" in err
    assert tree_state(tmp_path) == before

    (directory / "amulet.meta.json").unlink()  # no record of its settings: refused too
    before = tree_state(tmp_path)
    code, err = main_in_process(gen_args(model, data, tmp_path))
    assert code == 2 and "without a readable sidecar" in err
    assert tree_state(tmp_path) == before

    code, err = main_in_process(gen_args(model, data, tmp_path, "--overwrite", max_new_tokens=4))
    assert code == 0, err
    assert final.read_bytes() != reference
    meta = json.loads((directory / "amulet.meta.json").read_text())
    assert meta["fingerprint"]["max_new_tokens"] == 4

    code, err = main_in_process(gen_args(model, data, tmp_path, "--overwrite", max_new_tokens=4))
    assert code == 0, err
    assert final.read_bytes() != reference
    meta = json.loads((directory / "amulet.meta.json").read_text())
    assert meta["fingerprint"]["max_new_tokens"] == 4


FINGERPRINT = {"model": "m", "max_new_tokens": 16}


def records(batch: int) -> list[dict]:
    return [{"index": batch, "question": "q", "response": "r" * 50}]


def test_torn_tail_is_ignored_by_readers_and_cut_by_the_writer(tmp_path):
    path = tmp_path / "amulet.part0.jsonl"
    with PartialStore(path, FINGERPRINT, {"config": 1}) as store:
        store.append(0, records(0))
        store.append(1, records(1))
    intact = path.read_bytes()
    with open(path, "ab") as handle:  # a kill in the middle of the third write
        handle.write(b'{"batch": 2, "records": [{"index": 2, "quest')
    assert sorted(PartialStore(path, FINGERPRINT).load()) == [0, 1]
    assert path.read_bytes() != intact  # reading changes nothing

    with PartialStore(path, FINGERPRINT) as store:
        assert path.read_bytes() == intact
        store.append(2, records(2))
    assert sorted(PartialStore(path, FINGERPRINT).load()) == [0, 1, 2]
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])


def test_torn_header_starts_the_file_afresh(tmp_path):
    path = tmp_path / "amulet.part0.jsonl"
    path.write_bytes(b'{"fingerprint": {"mod')
    assert PartialStore(path, FINGERPRINT).load() == {}
    with PartialStore(path, FINGERPRINT) as store:
        store.append(0, records(0))
    assert list(PartialStore(path, FINGERPRINT).load()) == [0]


def test_damage_before_the_last_line_is_reported_not_skipped(tmp_path):
    path = tmp_path / "amulet.part0.jsonl"
    with PartialStore(path, FINGERPRINT) as store:
        store.append(0, records(0))
    with open(path, "ab") as handle:
        handle.write(b"garbage\n")
    with pytest.raises(UserError, match="damaged at line 3"):
        PartialStore(path, FINGERPRINT).load()
    with pytest.raises(UserError, match="damaged at line 3"):
        PartialStore(path, FINGERPRINT).open()
    assert path.read_bytes().endswith(b"garbage\n")  # left as found, for the user to look at


def test_a_second_writer_on_the_same_partial_file_is_refused(tmp_path):
    path = tmp_path / "amulet.part0.jsonl"
    with PartialStore(path, FINGERPRINT):
        with pytest.raises(UserError, match="being written by another process"):
            PartialStore(path, FINGERPRINT).open()


def test_another_fingerprint_is_refused_naming_the_fields(tmp_path):
    path = tmp_path / "amulet.part0.jsonl"
    with PartialStore(path, FINGERPRINT) as store:
        store.append(0, records(0))
    other = {**FINGERPRINT, "max_new_tokens": 8, "seed": 1}
    with pytest.raises(UserError, match=r"max_new_tokens: 16 -> 8, seed: null -> 1"):
        PartialStore(path, other).load()


def test_a_larger_limit_decodes_only_the_new_questions_and_extends_the_file(
    model, data, reference, tmp_path
):
    final, directory = run_files(tmp_path, model)
    code, err = main_in_process(gen_args(model, data, tmp_path, "--limit", "4"))
    assert code == 0, err
    first = json.loads(final.read_text())
    assert [r["index"] for r in first] == [0, 1, 2, 3]

    code, err = main_in_process(gen_args(model, data, tmp_path, "--limit", "7"))
    assert code == 0, err
    assert "3 of 7 questions to decode" in err
    extended = json.loads(final.read_text())
    assert extended[:4] == first
    assert extended == json.loads(reference)[:7]  # as if run with --limit 7 from the start
    meta = json.loads((directory / "amulet.meta.json").read_text())
    assert meta["fingerprint"]["limit"] == 7 and meta["extended_from_records"] == 4

    before = tree_state(tmp_path)  # a smaller limit is already covered: nothing to do
    code, err = main_in_process(gen_args(model, data, tmp_path, "--limit", "5"))
    assert code == 0, err
    assert "1 of 1 runs already complete" in err
    assert tree_state(tmp_path) == before


def test_a_greedy_partial_resumes_under_another_seed(model, data, reference, tmp_path):
    final, directory = run_files(tmp_path, model)
    partial_file_of(gen_args(model, data, tmp_path, "--seed", "1"), [0, 1])
    code, err = main_in_process(gen_args(model, data, tmp_path, "--seed", "2"))
    assert code == 0, err
    assert f"{len(QUESTIONS) - 4} of {len(QUESTIONS)} questions" in err


def test_a_sampled_run_killed_midway_resumes_to_the_uninterrupted_file(model, data, tmp_path):
    sampled = ("--do_sample", "--temperature", "1.3", "--seed", "7")
    whole = tmp_path / "whole"
    code, err = main_in_process(gen_args(model, data, whole, *sampled))
    assert code == 0, err
    expected = run_files(whole, model)[0].read_bytes()
    code, err = main_in_process(gen_args(model, data, tmp_path / "again", *sampled))
    assert run_files(tmp_path / "again", model)[0].read_bytes() == expected  # seeded

    out = tmp_path / "killed"
    args = gen_args(model, data, out, *sampled)
    final, directory = run_files(out, model)
    proc = start(main_cmd(args))
    wait_for_batches(directory / "amulet.part0.jsonl", 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert not final.exists() and 2 <= batch_lines(directory / "amulet.part0.jsonl") < N_BATCHES
    code, err = main_in_process(args)
    assert code == 0, err
    assert final.read_bytes() == expected
    unseeded = tmp_path / "other-seed"
    code, err = main_in_process(gen_args(model, data, unseeded, *sampled[:-1], "8"))
    assert run_files(unseeded, model)[0].read_bytes() != expected  # the seed matters


def test_continuous_batching_writes_the_files_of_batch_by_batch_decoding(model, data, tmp_path):
    files = {}
    for name, extra in (("continuous", ()), ("fixed", ("--no_continuous_batching",))):
        out = tmp_path / name
        code, err = main_in_process(gen_args(model, data, out, *extra, "--batch_size", "3",
                                             method="la,amulet", max_new_tokens=24))
        assert code == 0, err
        files[name] = [run_files(out, model, m)[0].read_bytes() for m in ("la", "amulet")]
    assert files["continuous"] == files["fixed"]
