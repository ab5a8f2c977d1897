"""The append-only JSONL store: durable appends, torn tail cut, damage reported."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.errors import EvalError  # noqa: E402
from evals.jsonl_store import JsonlAppender, repair_and_read, write_text_atomic  # noqa: E402


def test_records_round_trip_and_missing_file_is_empty(tmp_path):
    path = tmp_path / "sub" / "cache.jsonl"
    assert repair_and_read(path) == []
    with JsonlAppender(path) as appender:
        appender.append({"key": "a", "text": "ünïcode \n newline"})
        appender.extend([{"key": "b"}, {"key": "c"}])
    assert [r["key"] for r in repair_and_read(path)] == ["a", "b", "c"]
    assert repair_and_read(path)[0]["text"] == "ünïcode \n newline"


def test_torn_last_line_is_dropped_and_the_file_truncated_before_appending(tmp_path, capsys):
    path = tmp_path / "cache.jsonl"
    path.write_text(json.dumps({"key": "a"}) + "\n" + '{"key": "b", "verd')
    assert repair_and_read(path) == [{"key": "a"}]
    assert "torn last line" in capsys.readouterr().err
    assert path.read_text() == json.dumps({"key": "a"}) + "\n"
    with JsonlAppender(path) as appender:
        appender.append({"key": "c"})
    assert [r["key"] for r in repair_and_read(path)] == ["a", "c"]


def test_damaged_middle_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(EvalError, match=r"cache.jsonl:2: not a JSON record"):
        repair_and_read(path)


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "cache.jsonl"
    appender = JsonlAppender(path)
    payload = "x" * 5000

    def write(worker: int) -> None:
        for k in range(25):
            appender.append({"key": f"{worker}-{k}", "pad": payload})

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    appender.close()
    records = repair_and_read(path)
    assert len(records) == 100 and len({r["key"] for r in records}) == 100


def test_atomic_write_replaces_the_whole_file(tmp_path):
    path = tmp_path / "out" / "table.csv"
    write_text_atomic(path, "old\n")
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in path.parent.iterdir()] == ["table.csv"]
