"""Keys planted in the environment reach no file the generation writes (partial files,
responses, sidecar) and no message it prints, on success, on interruption and on error."""

from __future__ import annotations

import json
import signal
import uuid

import pytest
from cli_helpers import (
    cli_env,
    demo_data,
    finish,
    gen_args,
    main_cmd,
    main_in_process,
    run_files,
    run_main,
    start,
    wait_for_batches,
)

SECRET_VARS = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
               "ANTHROPIC_API_KEY", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "AMULET_SECRET")
ENVIRONMENT_FACTS = {"python", "torch", "transformers", "platform", "torch_threads",
                     "git_commit", "world_size", "device", "model_dtype"}


@pytest.fixture(scope="module")
def secrets() -> dict[str, str]:
    return {name: f"planted-{name.lower()}-{uuid.uuid4().hex}" for name in SECRET_VARS}


def leaks(secrets: dict[str, str], *texts: str | bytes) -> list[str]:
    found = []
    for name, value in secrets.items():
        for text in texts:
            haystack = text.encode() if isinstance(text, str) else text
            # the value, and its distinctive tail (in case something abbreviates or masks it)
            if value.encode() in haystack or value[-32:].encode() in haystack:
                found.append(name)
    return found


def files_under(root) -> list[bytes]:
    return [p.read_bytes() for p in root.rglob("*") if p.is_file()]


def test_no_planted_key_in_partial_or_final_files_or_messages(
    model, tmp_path_factory, tmp_path, secrets, monkeypatch
):
    data = demo_data(tmp_path_factory)
    args = gen_args(model, data, tmp_path)
    final, directory = run_files(tmp_path, model)
    proc = start(main_cmd(args), env=cli_env(**secrets))
    wait_for_batches(directory / "amulet.part0.jsonl", 1, proc)
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130
    parts = files_under(tmp_path)
    assert parts and not final.exists()
    assert leaks(secrets, out, err, *parts) == []
    header = json.loads((directory / "amulet.part0.jsonl").read_text().splitlines()[0])
    assert set(header) == {"fingerprint", "config"}

    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    code, err = main_in_process(args)
    assert code == 0, err
    assert leaks(secrets, err, *files_under(tmp_path)) == []
    meta = json.loads((directory / "amulet.meta.json").read_text())
    assert set(meta["environment"]) == ENVIRONMENT_FACTS
    assert sorted(p.name for p in directory.iterdir()) == ["amulet.json", "amulet.meta.json"]


@pytest.mark.parametrize("model_name", ["nosuch-org/nosuch-model", "./no/such/model"])
def test_no_planted_key_in_error_messages(model_name, tmp_path_factory, tmp_path, secrets):
    data = demo_data(tmp_path_factory)
    args = gen_args(model_name, data, tmp_path)
    failed = run_main(args, env=cli_env(**secrets))
    assert failed.returncode == 2
    assert "error:" in failed.stderr
    assert leaks(secrets, failed.stdout, failed.stderr) == []
    assert not tmp_path.joinpath("creative").exists()
