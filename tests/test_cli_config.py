"""Bad input at the command line: one clear stderr line, a non-zero exit, no traceback, nothing
written, and no model (not even torch) loaded. Run as subprocesses of main.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATASETS = {
    "three": [{"index": 0, "question": "Why is the sky blue?"},
              {"index": 1, "question": "Write a haiku about rain."},
              {"index": 2, "question": "Hi"}],
    "no_question": [{"index": 0, "question": "Fine"}, {"index": 1, "prompt": "Where is it?"}],
    "empty": [],
}


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMULET_DATA")}
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli_data")
    for name, records in DATASETS.items():
        (path / f"{name}.json").write_text(json.dumps(records))
    (path / "malformed.json").write_text('[{"index": 0, "question": "unterminated')
    return path


def run_main(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env=clean_env(),
        capture_output=True, text=True, timeout=120,
    )


# (name, extra arguments, what the one stderr line must say); every run otherwise valid
BAD_INPUTS = [
    ("unknown_method", ["--method", "amulett"], ["unknown method 'amulett'",
                                                 "did you mean 'amulet'"]),
    ("unknown_method_in_list", ["--method", "la,beem"], ["'beem'", "did you mean 'beam'"]),
    ("unknown_preference", ["--pref_name", "creatve"], ["unknown preference 'creatve'",
                                                        "did you mean 'creative'", "--pref_text"]),
    ("missing_dataset", ["--eval_data", "HelpSteer_trian"],
     ["'HelpSteer_trian' not found", "available: ", "three", "fetch_benchmarks", "--data_dir"]),
    ("dataset_as_path", ["--eval_data", "../three"], ["plain dataset name"]),
    ("malformed_json", ["--eval_data", "malformed"], ["malformed.json is not valid JSON"]),
    ("record_without_question", ["--eval_data", "no_question"], ["record 1 has no 'question'"]),
    ("empty_dataset", ["--eval_data", "empty"], ["empty.json holds no records"]),
    ("negative_eta", ["--eta", "-1"], ["--eta must be > 0, got -1"]),
    ("zero_eta", ["--eta", "0"], ["--eta must be > 0"]),
    ("negative_iteration_num", ["--iteration_num", "-1"], ["--iteration_num must be >= 0"]),
    ("zero_num_beams", ["--method", "beam", "--num_beams", "0"], ["--num_beams must be >= 1"]),
    ("zero_max_new_tokens", ["--max_new_tokens", "0"], ["--max_new_tokens must be >= 1"]),
    ("top_p_above_one", ["--do_sample", "--top_p", "1.5"], ["--top_p must be in (0, 1]"]),
    ("top_p_zero", ["--do_sample", "--top_p", "0"], ["--top_p must be in (0, 1]"]),
    ("negative_alpha", ["--alpha", "-2"], ["--alpha must be >= 0"]),
    ("zero_player_lambda", ["--player_lambda", "0"], ["--player_lambda must be > 0"]),
    ("zero_num_threads", ["--num_threads", "0"], ["--num_threads must be >= 1"]),
]


@pytest.mark.parametrize(("name", "args", "says"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gives_one_error_line_nonzero_exit_and_writes_nothing(
    tiny_model_dirs, data_dir, tmp_path, name, args, says
):
    output_dir = tmp_path / "out"
    result = run_main([
        "--model_name", str(tiny_model_dirs["llama"]), "--data_dir", str(data_dir),
        "--eval_data", "three", "--output_dir", str(output_dir), *args,
    ])
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr and not result.stdout.strip()
    for fragment in says:
        assert fragment in lines[0]
    assert not output_dir.exists() or not any(output_dir.iterdir())


def test_help_works_and_lists_every_option_group():
    result = run_main(["--help"])
    assert result.returncode == 0 and not result.stderr
    for text in ("--method", "--pref_text", "--iteration_num", "--amulet_solver", "decoding",
                 "LA and Amulet", "hardware"):
        assert text in result.stdout


def test_help_shows_the_defaults():
    shown = " ".join(run_main(["--help"]).stdout.split())
    for text in ("--max_new_tokens MAX_NEW_TOKENS response length cap (default: 128)",
                 "(default: amulet)", "(default: 0.7)", "(default: closed_form)",
                 f"(default: {ROOT / 'data'})"):
        assert text in shown


def test_started_elsewhere_with_a_slash_in_the_preference_and_a_thread_count(
    tiny_model_dirs, tmp_path
):
    """From another directory the default --data_dir is still the project's data/ (its demo
    questions); a "/" in --pref_text is fine (the directory is a slug of the text); and
    --num_threads reaches torch (the sidecar records its thread count: 2, against the 1 of
    OMP_NUM_THREADS=1 in the environment)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    text = "Answer in 1/2 the words, and/or with a smile."
    env = {**clean_env(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--model_name", str(tiny_model_dirs["llama"]),
         "--method", "pref", "--pref_text", text, "--limit", "1", "--max_new_tokens", "2",
         "--num_threads", "2", "--output_dir", "out"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [final] = (elsewhere / "out").glob("custom-answer-in-1-2-the-words-*/*/demo/pref.json")
    demo = json.loads((ROOT / "data" / "demo.json").read_text())
    [record] = json.loads(final.read_text())
    assert record["preference"] == text and record["question"] == demo[0]["question"]
    meta = json.loads(final.with_name("pref.meta.json").read_text())
    assert meta["environment"]["torch_threads"] == 2
    assert "num_threads" not in meta["fingerprint"]


def python_says(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_config_and_parse_arguments_does_not_import_torch():
    code = (
        "import sys, config\n"
        "config.build_parser()\n"
        "c = config.config_from_args(['--method', 'all', '--max_new_tokens', '4'])\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules), c.methods)\n"
    )
    assert python_says(code) == "[] ['base', 'pref', 'beam', 'la', 'amulet']"


def test_bad_dataset_error_comes_before_torch_is_imported(data_dir, tmp_path):
    code = (
        "import sys, main\n"
        f"rc = main.main(['--data_dir', {str(data_dir)!r}, '--eval_data', 'empty',\n"
        f"                '--output_dir', {str(tmp_path / 'out')!r}])\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    assert python_says(code) == "2 False"


def test_method_and_preference_lists_expand():
    code = (
        "import config\n"
        "c = config.config_from_args(['--method', 'la, amulet,la', '--pref_name', 'all'])\n"
        "print(c.methods, len(c.pref_names))\n"
    )
    assert python_says(code) == "['la', 'amulet'] 8"
