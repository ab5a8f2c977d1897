"""Every bad input: one clear line on stderr, exit code 2, no traceback, no file written or
changed. Table-driven; each case runs main.py in a subprocess in its own workspace, all cases
at once (most end in a tenth of a second; those that must load a model overlap)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_helpers import (
    build_variant,
    classifier_model,
    finish,
    main_cmd,
    main_in_process,
    sensitive_model,
    shared_dir,
    start,
    tree_state,
    write_dataset,
    write_json,
)

OK_QUESTIONS = ["Why do cats purr?", "What is rain?"]
LONG_QUESTION = "Please summarise this. " + "word " * 1100  # > the tiny models' 1024 positions


@dataclass(frozen=True)
class Case:
    name: str
    expect: tuple[str, ...]  # fragments of the one error line
    dataset: object = None  # written as data/bad.json: bytes as they are, else as JSON
    args: tuple[str, ...] = ()
    model: str = "tiny"  # tiny, nan, rm, or a literal --model_name
    output: str = "out"  # relative to the workspace; '{file}' is a regular file there


def records(*questions, **extra) -> list[dict]:
    return [{"index": i, "question": q, **extra} for i, q in enumerate(questions)]


CASES = [
    Case("dataset_missing", ("dataset 'nosuch' not found", "available:"),
         args=("--eval_data", "nosuch")),
    Case("dataset_not_json", ("bad.json is not valid JSON",), dataset=b'[{"index": 0, '),
    Case("dataset_not_utf8", ("bad.json is not valid JSON",), dataset=b"\xff\xfe[\x00"),
    Case("dataset_not_a_list", ("must hold a JSON list of records, found dict",),
         dataset={"index": 0, "question": "q"}),
    Case("dataset_empty_list", ("holds no records",), dataset=[]),
    Case("record_not_an_object", ("record 1 is not a JSON object",),
         dataset=[{"index": 0, "question": "q"}, "just a string"]),
    Case("record_without_question", ("record 0 has no 'question'",),
         dataset=[{"index": 0, "prompt": "q"}]),
    Case("question_empty", ("record 1 has an empty or non-string 'question'",),
         dataset=records("fine", "   ")),
    Case("question_not_a_string", ("record 0 has an empty or non-string 'question'",),
         dataset=[{"index": 0, "question": 42}]),
    Case("index_duplicated", ("record 1 repeats index 7",),
         dataset=[{"index": 7, "question": "a"}, {"index": 7, "question": "b"}]),
    Case("index_not_an_integer", ("record 0 has a non-integer 'index': '3'",),
         dataset=[{"index": "3", "question": "a"}]),
    Case("index_a_float", ("record 1 has a non-integer 'index': 1.5",),
         dataset=[{"index": 0, "question": "a"}, {"index": 1.5, "question": "b"}]),
    Case("index_on_some_records_only", ("record 1 has no 'index' while others have one",),
         dataset=[{"index": 0, "question": "a"}, {"question": "b"}]),
    Case("question_longer_than_context",
         ("bad.json: question index 1 needs", "model's context of 1024",
          "--truncate_long_prompts"),
         dataset=records("short", LONG_QUESTION)),
    Case("eval_data_escapes_data_dir", ("--eval_data '../x' must be a plain dataset name",),
         args=("--eval_data", "../x")),
    Case("eval_data_absolute_path", ("must be a plain dataset name",),
         args=("--eval_data", "/etc/passwd")),
    Case("vllm_args", ("--backend vllm runs base, pref, beam, la, amulet and implicit PAD",
                       "--method args with --backend hf"),
         args=("--backend", "vllm", "--method", "args", "--rm_name", "some/rm")),
    Case("vllm_beam_sampling", ("--method beam with --do_sample (beam sampling)",),
         args=("--backend", "vllm", "--method", "beam", "--do_sample")),
    Case("vllm_explicit_pad", ("--backend vllm runs implicit PAD only",),
         args=("--backend", "vllm", "--method", "pad", "--rm_name", "some/persrm")),
    Case("vllm_odd_max_num_seqs", ("--vllm_max_num_seqs must be even",),
         args=("--backend", "vllm", "--method", "la", "--vllm_max_num_seqs", "7")),
    Case("backend_unknown", ("invalid choice: 'tgi'",), args=("--backend", "tgi")),
    Case("eval_data_control_character", ("must be a plain dataset name",),
         args=("--eval_data", "de\x1bmo")),
    Case("model_name_escapes_output_dir", ("model name '..' cannot be a directory name",),
         model="someone/.."),
    Case("model_name_control_character", ("--model_name must not contain control characters",),
         model="tiny\x07model"),
    Case("pref_text_control_character", ("--pref_text must not contain",),
         args=("--pref_text", "be\nbrief")),
    Case("output_dir_is_under_a_file",
         ("cannot write to output directory", "is not a directory"),
         model="nosuch-org/nosuch-model", output="{file}/responses"),
    # a pseudo filesystem refuses new files to everyone, root included (who passes every
    # permission check, so a chmod-ed directory would not do)
    Case("output_dir_not_writable",
         ("cannot write to output directory", "/proc is not writable"),
         model="nosuch-org/nosuch-model", output="/proc/amulet-no-such-dir/responses"),
    Case("model_unreachable", ("cannot load model 'nosuch-org/nosuch-model'", "offline"),
         model="nosuch-org/nosuch-model"),
    Case("model_directory_missing", ("model directory not found: ./no/such/model",),
         model="./no/such/model"),
    Case("model_directory_without_model", ("is a directory without a model in it",),
         model="{empty}"),
    Case("model_gives_nan_scores",
         ("the scores became NaN in batch 0", "question indices", "weights"),
         model="nan", args=("--method", "la")),
    Case("model_gives_nan_scores_while_sampling",
         ("the scores became NaN in batch 0", "question indices", "weights"),
         model="nan", args=("--method", "all", "--do_sample")),
    Case("model_is_a_reward_model", ("weights missing from the checkpoint", "lm_head",
                                     "needs a causal language model"),
         model="rm", args=("--method", "pref")),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model_dirs) -> dict[str, Path]:
    return {
        "tiny": sensitive_model(tmp_path_factory, tiny_model_dirs),
        "nan": build_variant(tiny_model_dirs["llama"], shared_dir(tmp_path_factory, "tiny-nan"),
                             nan=True),
        "rm": classifier_model(tmp_path_factory, tiny_model_dirs),
    }


def prepare(case: Case, root: Path, models: dict[str, Path]) -> list[str]:
    """The workspace of one case (data dir, empty dir, a file) and its args."""
    data = root / "data"
    write_dataset(data, "demo", OK_QUESTIONS)
    if isinstance(case.dataset, bytes):
        (data / "bad.json").write_bytes(case.dataset)
    elif case.dataset is not None:
        write_json(data / "bad.json", case.dataset)
    (root / "empty").mkdir()
    (root / "file").write_text("not a directory\n")
    model = {"tiny": str(models["tiny"]), "nan": str(models["nan"]), "rm": str(models["rm"]),
             "{empty}": str(root / "empty")}.get(case.model, case.model)
    output = root / case.output.replace("{file}", "file")
    args = ["--model_name", model, "--data_dir", str(data), "--output_dir", str(output),
            "--eval_data", "bad" if case.dataset is not None else "demo",
            "--max_new_tokens", "4", "--batch_size", "2", "--device", "cpu"]
    return args + list(case.args)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, models) -> dict[str, tuple]:
    """Start every case at once, then collect (exit code, stderr, files before, files after)."""
    model_state = tree_state(*models.values())
    running = {}
    for case in CASES:
        root = tmp_path_factory.mktemp(case.name)
        args = prepare(case, root, models)
        running[case.name] = (root, tree_state(root), start(main_cmd(args)))
    results = {}
    for name, (root, before, proc) in running.items():
        code, _, err = finish(proc)
        results[name] = (code, err, before, tree_state(root))
    assert tree_state(*models.values()) == model_state
    return results


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_error_line_exit_2_and_touches_no_file(case, outcomes):
    code, err, before, after = outcomes[case.name]
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert "Traceback" not in err, err
    assert code == 2, err
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    for fragment in case.expect:
        assert fragment.lower() in errors[0].lower(), errors[0]
    assert after == before


def test_output_dir_is_checked_before_the_model_is_loaded(outcomes):
    code, err, _, _ = outcomes["output_dir_is_under_a_file"]
    assert "cannot load model" not in err and "Loading" not in err


def test_long_question_is_cut_from_the_left_with_a_warning_when_asked(models, tmp_path):
    data = tmp_path / "data"
    write_dataset(data, "long", OK_QUESTIONS + [LONG_QUESTION])
    args = ["--model_name", str(models["tiny"]), "--data_dir", str(data), "--output_dir",
            str(tmp_path / "out"), "--eval_data", "long", "--max_new_tokens", "4",
            "--method", "la", "--device", "cpu", "--truncate_long_prompts"]
    code, err = main_in_process(args)
    assert code == 0, err
    assert "warning:" in err and "question index 2 cut from the left by" in err
    final = tmp_path / "out" / "creative" / models["tiny"].name / "long" / "la.json"
    saved = json.loads(final.read_text())
    assert [r["index"] for r in saved] == [0, 1, 2]
    assert saved[2]["question"] == LONG_QUESTION  # the record keeps the full question


def test_cases_cover_the_issue_list():
    """The bad inputs of issue 5, each present in the table."""
    names = {c.name for c in CASES}
    assert {"dataset_missing", "dataset_not_json", "dataset_not_a_list", "record_not_an_object",
            "record_without_question", "question_empty", "question_not_a_string",
            "index_duplicated", "index_not_an_integer", "question_longer_than_context",
            "eval_data_escapes_data_dir", "model_name_escapes_output_dir",
            "model_name_control_character",
            "pref_text_control_character", "output_dir_is_under_a_file",
            "model_unreachable"} <= names
