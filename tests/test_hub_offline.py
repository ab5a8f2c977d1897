"""A hub id that cannot be fetched fails in seconds with one line, in main.py and rm_evals.

The hub is made unreachable for certain (an HTTPS proxy on a local port nothing listens on),
and HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE are removed from the environment, so the check
itself must find the hub unreachable. The time bound is generous: this checks the fast path
(about 2 s here, against about 60 s of retries before), not speed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOUND_SECONDS = 10


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unreachable_hub_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "NO_PROXY", "no_proxy")}
    proxy = f"http://127.0.0.1:{closed_port()}"
    env.update(HTTPS_PROXY=proxy, https_proxy=proxy, OMP_NUM_THREADS="1")
    return env


def timed_run(argv: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, *argv], cwd=cwd, env=unreachable_hub_env(),
                          capture_output=True, text=True, timeout=300)
    return done, time.monotonic() - started


def test_main_fails_fast_with_one_line(tmp_path):
    done, seconds = timed_run([str(ROOT / "main.py"), "--model_name", "nosuch-org/nosuch-model",
                               "--output_dir", str(tmp_path / "out")], ROOT)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "nosuch-org/nosuch-model" in lines[0] and "cannot be reached" in lines[0]
    assert seconds < BOUND_SECONDS, f"took {seconds:.1f} s"


def test_rm_evals_fails_fast_with_one_line(tmp_path):
    run = tmp_path / "responses" / "creative" / "M" / "toy"
    run.mkdir(parents=True)
    for method in ("base", "pref"):
        (run / f"{method}.json").write_text(json.dumps(
            [{"index": 0, "question": "Why?", "preference": "p", "response": method}]))
    done, seconds = timed_run(
        [str(ROOT / "evals" / "rm_evals.py"), "--output_dir", str(tmp_path / "responses"),
         "--results_dir", str(tmp_path / "results"), "--methods", "base,pref",
         "--rm_name", "nosuch-org/nosuch-rm", "--no_progress"], ROOT)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "nosuch-org/nosuch-rm" in lines[0] and "cannot be reached" in lines[0]
    assert seconds < BOUND_SECONDS, f"took {seconds:.1f} s"


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_an_offline_variable_is_honoured_without_any_connection(variable, monkeypatch):
    from DecodingMethodsModels.models import hub

    monkeypatch.setattr(hub, "_found_unreachable", None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(hub, "can_connect", lambda *a: pytest.fail("connected"))
    assert hub.offline_reason() == f"{variable}=1 is set"


def test_a_proxy_is_what_the_check_connects_to(monkeypatch):
    from DecodingMethodsModels.models import hub

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert hub.hub_address() == ("proxy.example", 3128)
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert hub.hub_address() == ("huggingface.co", 443)
