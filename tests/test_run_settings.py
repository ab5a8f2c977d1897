"""The evaluations' check that every method of a setting was generated with the same settings
(evals/scoring/run_settings.py), on hand-made sidecars."""

from __future__ import annotations

import json

from evals.scoring.run_settings import read_fingerprints, settings_problems

SHARED = {"version": 2, "model": "m", "dtype": "float32", "max_new_tokens": 128, "limit": None}


def write_meta(directory, method, fingerprint):
    (directory / f"{method}.meta.json").write_text(json.dumps({"fingerprint": fingerprint}))


def test_methods_of_the_same_settings_have_no_problem_whatever_their_own_hyperparameters(
    tmp_path
):
    write_meta(tmp_path, "la", {**SHARED, "method": "la", "reinforce_ratio": 2.0})
    write_meta(tmp_path, "amulet", {**SHARED, "method": "amulet", "iteration_num": 60})
    assert settings_problems(read_fingerprints(tmp_path, ["la", "amulet"])) == []


def test_a_shared_setting_that_differs_is_named_with_each_methods_value(tmp_path):
    write_meta(tmp_path, "base", SHARED)
    write_meta(tmp_path, "amulet", {**SHARED, "max_new_tokens": 64})
    problems = settings_problems(read_fingerprints(tmp_path, ["base", "amulet"]))
    assert problems == ["max_new_tokens differs between methods: base=128, amulet=64"]


def test_another_limit_is_no_problem_methods_are_compared_on_shared_questions(tmp_path):
    # the README's order: amulet on all 12 demo questions, then the others with --limit 4
    write_meta(tmp_path, "base", {**SHARED, "limit": 4})
    write_meta(tmp_path, "amulet", SHARED)
    assert settings_problems(read_fingerprints(tmp_path, ["base", "amulet"])) == []


def test_a_missing_or_damaged_sidecar_is_reported(tmp_path):
    write_meta(tmp_path, "base", SHARED)
    (tmp_path / "pref.meta.json").write_text("{not json")
    problems = settings_problems(read_fingerprints(tmp_path, ["base", "pref", "la"]))
    assert problems == ["pref: no readable sidecar, its settings are unknown",
                        "la: no readable sidecar, its settings are unknown"]


def test_loading_responses_of_differing_settings_says_so(tmp_path, capsys):
    from evals.scoring.responses import RunKey, load_run

    directory = tmp_path / "creative" / "m" / "demo"
    directory.mkdir(parents=True)
    for method, tokens in (("pref", 128), ("amulet", 64)):
        records = [{"index": 0, "question": "q", "preference": "p", "response": method}]
        (directory / f"{method}.json").write_text(json.dumps(records))
        write_meta(directory, method, {**SHARED, "max_new_tokens": tokens})
    run = load_run(tmp_path, RunKey("creative", "m", "demo"), ["pref", "amulet"])
    assert run.settings_problems == (
        "max_new_tokens differs between methods: pref=128, amulet=64",)
    assert "warning:" in capsys.readouterr().err


def test_files_without_any_sidecar_have_nothing_to_compare(tmp_path):
    assert settings_problems(read_fingerprints(tmp_path, ["base", "pref"])) == []
