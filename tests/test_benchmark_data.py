"""Tests that read benchmark files (not in the repository) skip with the reason when the files
are absent, and fail instead under REQUIRE_BENCHMARK_DATA=1, as CI (.ci/run) runs them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REQUIRE_DATA_VARIABLE, ROOT, TEST_DATA_VARIABLE, benchmark_file

NAME = "psoups_koala_eval_50.json"


def test_a_named_folder_is_where_the_file_is_found(tmp_path, monkeypatch):
    (tmp_path / NAME).write_text("[]")
    monkeypatch.setenv(TEST_DATA_VARIABLE, str(tmp_path))
    assert benchmark_file(NAME) == tmp_path / NAME


def test_a_missing_file_skips_and_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv(TEST_DATA_VARIABLE, str(tmp_path))
    monkeypatch.delenv(REQUIRE_DATA_VARIABLE, raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"{NAME}, found in none of {tmp_path}"):
        benchmark_file(NAME)
    monkeypatch.setenv(REQUIRE_DATA_VARIABLE, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{REQUIRE_DATA_VARIABLE}=1 but"):
        benchmark_file(NAME)


def _pad_data_tests(tmp_path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != REQUIRE_DATA_VARIABLE}
    clean.update({TEST_DATA_VARIABLE: str(tmp_path), **env})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "test_pad_data.py"), "-k", "psoups_copy_becomes or differs"],
        cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=300)


def test_without_the_data_the_pad_data_tests_skip_and_under_ci_fail(tmp_path):
    skipped = _pad_data_tests(tmp_path)
    assert skipped.returncode == 0, skipped.stdout[-2000:]
    assert "2 skipped" in skipped.stdout and f"needs the benchmark file {NAME}" in skipped.stdout
    failed = _pad_data_tests(tmp_path, **{REQUIRE_DATA_VARIABLE: "1"})
    # the file is asked for by a fixture: pytest counts a failure there as an error
    assert failed.returncode == 1 and "2 errors" in failed.stdout, failed.stdout[-2000:]
    assert f"{REQUIRE_DATA_VARIABLE}=1 but the test needs the benchmark file" in failed.stdout
