"""PAD's evaluation sets as benchmark files: P-Soups from a checked local copy, HelpSteer2's
selection rule, and a fast one-line error when the hub cannot be reached."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import benchmark_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "data"))

import fetch_pad_sets  # noqa: E402


@pytest.fixture
def psoups_copy() -> Path:
    """PAD's koala_eval_50.json (its P-Soups prompts), as published in its repository."""
    return benchmark_file("psoups_koala_eval_50.json")


def test_psoups_copy_becomes_a_benchmark_file_main_py_can_load(psoups_copy, tmp_path, capsys):
    assert fetch_pad_sets.main(["--psoups_from", str(psoups_copy), "--dest", str(tmp_path)]) == 0
    assert "50 questions" in capsys.readouterr().out
    source = json.loads(psoups_copy.read_text())
    written = json.loads((tmp_path / "psoups.json").read_text())
    assert written == [{"index": int(item["id"]), "question": item["prompt"]} for item in source]
    assert [r["index"] for r in written] == list(range(50))
    from DecodingMethodsModels.pipeline.eval_data import load_dataset

    dataset = load_dataset(tmp_path, "psoups")
    assert len(dataset.questions) == 50
    assert dataset.questions[2].question == "Can you tell my a story about nuclear physics?"


def test_a_copy_that_differs_from_pads_file_is_refused(psoups_copy, tmp_path, capsys):
    altered = tmp_path / "koala.json"
    altered.write_bytes(psoups_copy.read_bytes().replace(b"TCP/IP", b"TCP/IQ"))
    dest = tmp_path / "out"
    assert fetch_pad_sets.main(["--psoups_from", str(altered), "--dest", str(dest)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sha256" in err[0] and "koala_eval_50.json" in err[0]
    assert not dest.exists()
    assert fetch_pad_sets.main(["--psoups_from", str(tmp_path / "nope.json"), "--dest",
                                str(dest)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read the P-Soups copy" in err[0]


def test_pad_records_are_checked():
    assert fetch_pad_sets.psoups_records([{"id": "7", "prompt": "Hi"}], "f") == [
        {"index": 7, "question": "Hi"}]
    for bad in ([], [{"id": "x", "prompt": "Hi"}], [{"id": "1"}], {"id": "1", "prompt": "Hi"}):
        with pytest.raises(fetch_pad_sets.DataError):
            fetch_pad_sets.psoups_records(bad, "f")


def test_steers_selection_keeps_short_prompts_then_every_second_one():
    assert doctest.testmod(fetch_pad_sets).failed == 0
    prompts = ["p0", "p0", "x" * 100, "x" * 100, "y" * 101, "y" * 101, "p2", "p2", "p3"]
    assert fetch_pad_sets.steers_questions(prompts) == ["p0", "x" * 100, "p2"]


def _steers(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env}
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "data" / "fetch_pad_sets.py"), "--steers",
                           "--dest", str(tmp_path / "out")], env=clean, capture_output=True,
                          text=True, timeout=60)
    return done, time.monotonic() - start


def test_steers_without_the_hub_fails_fast_in_one_line(tmp_path):
    for env, reason in (({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
                        ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "127.0.0.1:9 cannot be reached")):
        done, seconds = _steers(tmp_path, **env)
        assert done.returncode == 1
        err = done.stderr.strip().splitlines()
        assert len(err) == 1, done.stderr
        assert "nvidia/HelpSteer2" in err[0] and reason in err[0]
        assert seconds < 10
        assert not (tmp_path / "out").exists()
