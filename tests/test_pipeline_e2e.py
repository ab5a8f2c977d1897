"""The whole pipeline on what main.py really writes: generate with all five methods, judge the
responses with the GPT-judge script against a local OpenAI-compatible server, score them with
the reward-model script.

The local judge prefers the longer text (equal lengths: Tie), so the expected win/tie/lose
counts follow from the response files alone, whatever order the texts were shown in.
"""

from __future__ import annotations

import csv
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cli_helpers import QUESTIONS, main_in_process

from evals.judge import gpt_cli as gpt_evals
from evals.scoring import rm_cli as rm_evals

METHODS = ("base", "pref", "beam", "la", "amulet")
BASELINES = ("base", "pref", "beam", "la")
N_QUESTIONS = 4
_TEXTS = re.compile(r'"text": """(.*?)"""\n\}', re.S)


class LengthJudge(BaseHTTPRequestHandler):
    """Chat-completions endpoint that answers for the longer of the two texts."""

    requests = 0
    lock = threading.Lock()

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            type(self).requests += 1
        first, second = _TEXTS.findall(body["messages"][1]["content"])
        answer = ("Text 1" if len(first) > len(second) else
                  "Text 2" if len(second) > len(first) else "Tie")
        data = json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def judge_url(monkeypatch):
    LengthJudge.requests = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), LengthJudge)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-test")
    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def generated(tmp_path_factory, tiny_model_dirs) -> tuple[Path, str]:
    """All five methods on the tiny Llama for the first questions: (responses dir, model)."""
    root = tmp_path_factory.mktemp("pipeline")
    data = root / "data"
    data.mkdir()
    records = [{"index": i, "question": q} for i, q in enumerate(QUESTIONS[:N_QUESTIONS])]
    (data / "four.json").write_text(json.dumps(records))
    model = tiny_model_dirs["llama"]
    code, err = main_in_process([
        "--model_name", str(model), "--method", "all", "--eval_data", "four",
        "--data_dir", str(data), "--output_dir", str(root / "responses"),
        "--max_new_tokens", "12", "--num_beams", "2", "--batch_size", "2",
    ])
    assert code == 0, err
    return root / "responses", model.name


def responses(run_dir: Path, method: str) -> dict[int, str]:
    records = json.loads((run_dir / f"{method}.json").read_text())
    return {r["index"]: r["response"] for r in records}


def test_judge_and_reward_model_run_on_main_py_outputs(generated, judge_url, tmp_path,
                                                       tiny_reward_model):
    responses_dir, model = generated
    run = ["--output_dir", str(responses_dir), "--model_name", model, "--eval_data", "four",
           "--pref_name", "creative"]
    run_dir = responses_dir / "creative" / model / "four"
    texts = {m: responses(run_dir, m) for m in METHODS}
    assert all(len(texts[m]) == N_QUESTIONS for m in METHODS)

    judge_args = [*run, "--results_dir", str(tmp_path / "results"), "--judge_base_url",
                  judge_url, "--bootstrap", "50", "--no_progress", "--no_plot"]
    assert gpt_evals.main(judge_args) == 0
    out_dir = tmp_path / "results" / "gpt_win_rate" / "creative" / model / "four"
    with open(out_dir / "gpt_judgments.csv", newline="") as handle:
        shown = [(int(r["index"]), r["text_1"], r["text_2"]) for r in csv.DictReader(handle)]
    assert len(shown) == N_QUESTIONS * len(BASELINES)
    # one request per distinct prompt: comparisons showing the same two texts share an answer
    distinct = {(i, texts[first][i], texts[second][i]) for i, first, second in shown}
    assert LengthJudge.requests == len(distinct)
    with open(out_dir / "gpt_win_rate_mtx.csv", newline="") as handle:
        table = {row["baseline"]: row for row in csv.DictReader(handle)}
    for baseline in BASELINES:
        amulet, other = texts["amulet"], texts[baseline]
        expected = {
            "win": sum(len(amulet[i]) > len(other[i]) for i in amulet),
            "tie": sum(len(amulet[i]) == len(other[i]) for i in amulet),
            "lose": sum(len(amulet[i]) < len(other[i]) for i in amulet),
        }
        got = {k: int(table[baseline][k]) for k in expected}
        assert got == expected, baseline
        assert int(table[baseline]["invalid"]) == 0
    assert gpt_evals.main(judge_args) == 0  # a rerun asks nothing
    assert LengthJudge.requests == len(distinct)

    rm_args = [*run, "--results_dir", str(tmp_path / "results"), "--rm_name",
               str(tiny_reward_model), "--methods", ",".join(METHODS), "--device", "cpu",
               "--batch_size", "3", "--no_progress"]
    assert rm_evals.main(rm_args) == 0
    score_dir = tmp_path / "results" / "rm_score" / "creative" / model / "four"
    lines = (score_dir / f"{tiny_reward_model.name}.scores.jsonl").read_text().splitlines()
    # one score per distinct conversation: methods that gave the same response share it
    assert len(lines) == len({(i, texts[m][i]) for m in METHODS for i in texts[m]})
    with open(score_dir / f"{tiny_reward_model.name}_logit0_avg.csv", newline="") as handle:
        averages = {row["method"]: row for row in csv.DictReader(handle)}
    assert set(averages) == set(METHODS)
    assert all(int(averages[m]["n"]) == N_QUESTIONS for m in METHODS)


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory) -> Path:
    import torch
    from rm_helpers import build_tokenizer, tiny_llama_config
    from transformers import LlamaForSequenceClassification

    path = tmp_path_factory.mktemp("reward") / "tiny-rm"
    tokenizer = build_tokenizer(path)
    torch.manual_seed(0)
    LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=1)).save_pretrained(
        path
    )
    return path
