"""A --data_dir that does not exist (or is a file) is said as such in one line, not as a
dataset missing from an empty folder."""

from __future__ import annotations

import pytest
from cli_helpers import main_in_process

from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.pipeline.eval_data import dataset_path


def test_a_missing_data_folder_is_named_as_missing(tmp_path):
    with pytest.raises(UserError, match=r"^the data folder \S+/nowhere \(--data_dir\) does not "
                                        r"exist; for the paper's benchmark files"):
        dataset_path(tmp_path / "nowhere", "demo")
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"\(--data_dir\) is not a folder"):
        dataset_path(tmp_path / "file", "demo")
    with pytest.raises(UserError, match=r"'demo' not found in .* \(available: none\)"):
        dataset_path(tmp_path, "demo")  # an existing, empty folder: the dataset is missing


def test_main_py_says_it_in_one_line_and_writes_nothing(tmp_path):
    code, err = main_in_process(["--data_dir", str(tmp_path / "nowhere"), "--output_dir",
                                 str(tmp_path / "out")])
    assert code == 2
    assert err.splitlines() == [
        f"error: the data folder {tmp_path / 'nowhere'} (--data_dir) does not exist; for the "
        "paper's benchmark files: python data/fetch_benchmarks.py (puts them in data/), or "
        "--data_dir DIR holding copies"]
    assert not (tmp_path / "out").exists()
