"""The GPT judge end to end against a real local HTTP server speaking the OpenAI chat API.

The server is a scripted judge: every response text carries ``score=N`` and the server
prefers the higher score (equal: Tie), so the expected win/tie/lose counts follow from the
fixture alone, whatever order the texts are shown in (``FakeJudge.prefer`` replaces that
rule). It reads the paper's prompt or ARGS's and answers in that protocol's form. It counts
every request it receives and every answer it completes, and can be told to fail, to answer
garbage, or to hang.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import combinations
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evals.judge import gpt_cli as gpt_evals  # noqa: E402
from evals.judge.judge import SYSTEM_PROMPT  # noqa: E402

SECRET = "sk-test-SECRET123"
PREFERENCE = "Your answer should be creative as much as possible."
METHODS = ("base", "pref", "la", "amulet")
# SCORES[method][question]: what the scripted judge prefers (ties where equal).
SCORES = {
    "base": [1, 1, 2, 1, 3, 1],
    "pref": [2, 1, 2, 2, 3, 2],
    "la": [3, 2, 2, 3, 1, 3],
    "amulet": [4, 2, 3, 4, 1, 4],
}
N_QUESTIONS = 6
_TEXTS = re.compile(r'"text": """(.*?)"""\n\}', re.S)
_ARGS_TEXTS = re.compile(r"\[The Start of Assistant [12]'s Answer\]\n(.*?)\n\n\[The End", re.S)


def prefer_higher_score(text_1: str, text_2: str) -> int:
    """1 or 2: the text with the higher ``score=N`` (0: a tie)."""
    s1 = int(re.search(r"score=(\d+)", text_1).group(1))
    s2 = int(re.search(r"score=(\d+)", text_2).group(1))
    return 1 if s1 > s2 else 2 if s2 > s1 else 0


class FakeJudge:
    """State of the scripted OpenAI-compatible server (shared with its handler threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received = 0
        self.answered: list[str] = []  # request fingerprints of completed answers
        self.orders: list[tuple[str, str]] = []  # (method shown first, method shown second)
        self.bodies: list[dict] = []  # every request body received
        self.script: list[str] = []  # per-request behaviours consumed in order
        self.hang_at: int | None = None  # request number that never gets an answer
        # Bodies answered with garbage by "sticky_garbage": a deterministic judge gives the
        # same garbage again to the very same request, and only to it.
        self.sticky: set[str] = set()
        self.release = threading.Event()
        self.auth: set[str] = set()
        self.server: ThreadingHTTPServer | None = None
        self.prefer = prefer_higher_score  # (text shown first, second) -> 1, 2 or 0 (tie)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"


def _decide(body: dict, prefer) -> tuple[str, tuple[str, str]]:
    user = body["messages"][1]["content"]
    is_args = body["messages"][0]["content"].startswith("[System]")
    text_1, text_2 = (_ARGS_TEXTS if is_args else _TEXTS).findall(user)
    choice = prefer(text_1, text_2)
    order = ((text_1.split() or [""])[0], (text_2.split() or [""])[0])  # an empty text too
    if is_args:  # ARGS: two scores on the first line, then an explanation
        answer = {1: "8 3", 2: "4 9", 0: "6 6"}[choice] + "\nAn explanation."
    else:  # vary the accepted answer forms the parser must understand
        answer = {1: "Text 1", 2: "[Text 2].", 0: "Tie."}[choice]
    return answer, order


def _make_handler(state: FakeJudge):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.received += 1
                number = state.received
                behaviour = state.script.pop(0) if state.script else "ok"
                state.auth.add(self.headers.get("Authorization", ""))
                state.bodies.append(body)
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            if state.hang_at == number:
                state.release.wait(timeout=60)
                return  # the client is gone by now: answer nothing
            if behaviour in ("429", "500", "503"):
                self._send(int(behaviour), {"error": {"message": f"scripted {behaviour}"}})
                return
            if behaviour == "401":
                self._send(401, {"error": {"message": "Incorrect API key provided: "
                                           + self.headers.get("Authorization", "")}})
                return
            answer, order = _decide(body, state.prefer)
            fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            with state.lock:
                if behaviour == "sticky_garbage":
                    state.sticky.add(fingerprint)
                sticky = fingerprint in state.sticky
            if behaviour == "garbage" or sticky:
                answer = "I think the first one"
            with state.lock:
                state.answered.append(fingerprint)
                state.orders.append(order)
            self._send(200, {
                "id": f"chatcmpl-{number}", "object": "chat.completion", "created": 0,
                "model": body["model"], "system_fingerprint": "fp_test",
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 2, "total_tokens": 102},
            })

    return Handler


@pytest.fixture()
def judge_server():
    state = FakeJudge()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    server.daemon_threads = True
    state.server = server
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    """Response files of one run under tmp_path, a key in the environment, no proxies."""
    run = tmp_path / "responses" / "creative" / "Tiny-Model" / "toy"
    run.mkdir(parents=True)
    for method, scores in SCORES.items():
        records = [
            {"index": i, "question": f"Question {i}: how {{now}}?", "preference": PREFERENCE,
             "response": f"{method} says answer {i} with score={s}"}
            for i, s in enumerate(scores)
        ]
        (run / f"{method}.json").write_text(json.dumps(records, indent=1))
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def cli_args(workspace: Path, server: FakeJudge, *extra: str) -> list[str]:
    return [
        "--output_dir", str(workspace / "responses"), "--results_dir", str(workspace / "results"),
        "--cache_path", str(workspace / "results" / "judge_cache.jsonl"),
        "--model_name", "Tiny-Model", "--eval_data", "toy", "--pref_name", "creative",
        "--methods", ",".join(METHODS), "--judge_base_url", server.base_url,
        "--retry_base_delay", "0.001", "--bootstrap", "200", "--no_progress", *extra,
    ]


def expected_counts(target: str, baseline: str) -> dict[str, int]:
    """Win/tie/lose of target over baseline straight from the SCORES table."""
    pairs = list(zip(SCORES[target], SCORES[baseline], strict=True))
    return {
        "win": sum(a > b for a, b in pairs),
        "tie": sum(a == b for a, b in pairs),
        "lose": sum(a < b for a, b in pairs),
    }


def read_table(path: Path) -> dict[str, dict[str, str]]:
    import csv

    with open(path, newline="") as handle:
        return {row["baseline"]: row for row in csv.DictReader(handle)}


def table_path(workspace: Path) -> Path:
    return (workspace / "results" / "gpt_win_rate" / "creative" / "Tiny-Model" / "toy"
            / "gpt_win_rate_mtx.csv")


def test_counts_match_the_scripted_judge_whatever_the_order_shown(workspace, judge_server):
    assert gpt_evals.main(cli_args(workspace, judge_server)) == 0
    table = read_table(table_path(workspace))
    assert set(table) == {"base", "pref", "la"}
    for baseline, row in table.items():
        want = expected_counts("amulet", baseline)
        got = {k: int(row[k]) for k in ("win", "tie", "lose")}
        assert got == want, baseline
        assert int(row["invalid"]) == 0
        assert row["judge"] == "gpt-4o-2024-05-13"
        assert float(row["win_rate"]) == pytest.approx(want["win"] / N_QUESTIONS)
        assert float(row["win_rate_ci_low"]) <= float(row["win_rate"])
        assert float(row["win_rate"]) <= float(row["win_rate_ci_high"])
    # The swap rule really showed the target in both positions.
    firsts = {first for first, _ in judge_server.orders}
    seconds = {second for _, second in judge_server.orders}
    assert "amulet" in firsts and "amulet" in seconds
    assert judge_server.received == len(judge_server.answered) == 3 * N_QUESTIONS
    out = table_path(workspace).parent
    assert (out / "gpt_win_rate.png").stat().st_size > 1000
    assert (out / "gpt_win_rate_mtx.md").read_text().startswith("| target |")


def test_rerun_is_served_from_the_cache_with_zero_requests(workspace, judge_server, monkeypatch):
    args = cli_args(workspace, judge_server)
    assert gpt_evals.main(args) == 0
    first_table = table_path(workspace).read_text()
    sent = judge_server.received
    assert gpt_evals.main(args) == 0
    assert judge_server.received == sent
    assert table_path(workspace).read_text() == first_table
    # Fully cached: no key is needed any more.
    monkeypatch.delenv("OPENAI_API_KEY")
    assert gpt_evals.main(args) == 0
    assert judge_server.received == sent


def test_a_new_bootstrap_seed_asks_the_judge_nothing_new(workspace, judge_server):
    args = cli_args(workspace, judge_server, "--bootstrap_seed", "1")
    assert gpt_evals.main(args) == 0
    sent = judge_server.received
    first = read_table(table_path(workspace))
    args[args.index("--bootstrap_seed") + 1] = "2"
    assert gpt_evals.main(args) == 0
    assert judge_server.received == sent  # same order shown, so every judgment is cached
    second = read_table(table_path(workspace))
    ci = ("win_rate_ci_low", "win_rate_ci_high")
    assert [first[b][k] for b in first for k in ci] != [second[b][k] for b in second for k in ci]
    for baseline, row in second.items():
        assert {k: row[k] for k in ("win", "tie", "lose")} == {
            k: first[baseline][k] for k in ("win", "tie", "lose")}
    sidecar = json.loads((table_path(workspace).parent / "gpt_eval_config.json").read_text())
    assert (sidecar["swap_seed"], sidecar["bootstrap_seed"]) == (42, 2)
    # --seed alone is the default of both: --seed 42 is the run above's order.
    assert gpt_evals.main(cli_args(workspace, judge_server, "--seed", "42")) == 0
    assert judge_server.received == sent
    # The swap seed does decide the order shown: another one is new judgments.
    assert gpt_evals.main(cli_args(workspace, judge_server, "--swap_seed", "7")) == 0
    assert judge_server.received > sent


def test_transient_errors_are_retried_and_garbage_is_re_asked(workspace, judge_server):
    judge_server.script = ["429", "500", "garbage", "503"]
    args = cli_args(workspace, judge_server, "--max_concurrency", "1")
    assert gpt_evals.main(args) == 0
    table = read_table(table_path(workspace))
    for baseline, row in table.items():
        assert {k: int(row[k]) for k in ("win", "tie", "lose")} == expected_counts(
            "amulet", baseline
        )
        assert int(row["invalid"]) == 0
    comparisons = 3 * N_QUESTIONS
    assert judge_server.received == comparisons + 4  # 3 failed attempts + 1 garbage answer
    records = [
        json.loads(line)
        for line in (workspace / "results" / "judge_cache.jsonl").read_text().splitlines()
    ]
    assert len(records) == comparisons
    assert sum(r["api_retries"] for r in records) == 3
    assert sum(r["invalid_answers"] for r in records) == 1


def test_an_invalid_answer_is_re_asked_with_a_different_request(workspace, judge_server):
    # The judge repeats its garbage to an identical request: only a changed one can help.
    judge_server.script = ["sticky_garbage"]
    args = cli_args(workspace, judge_server, "--max_concurrency", "1")
    assert gpt_evals.main(args) == 0
    rows = read_table(table_path(workspace))
    for baseline, row in rows.items():
        assert int(row["invalid"]) == 0
        assert {k: int(row[k]) for k in ("win", "tie", "lose")} == expected_counts(
            "amulet", baseline)
    assert judge_server.received == 3 * N_QUESTIONS + 1
    first, again = judge_server.bodies[0], judge_server.bodies[1]
    assert again["messages"][:2] == first["messages"]  # the paper's prompt, unchanged
    reminder = again["messages"][2]
    assert reminder["role"] == "user" and len(again["messages"]) == 3
    assert all(option in reminder["content"] for option in ("Text 1", "Text 2", "Tie"))
    assert again["seed"] != first["seed"]
    assert {k: v for k, v in again.items() if k not in ("messages", "seed")} == {
        k: v for k, v in first.items() if k not in ("messages", "seed")}
    records = [json.loads(line) for line in
               (workspace / "results" / "judge_cache.jsonl").read_text().splitlines()]
    assert sorted(r["invalid_answers"] for r in records) == [0] * (3 * N_QUESTIONS - 1) + [1]


def test_persistent_garbage_is_counted_invalid_apart_and_cached(workspace, judge_server):
    # The first comparison asked gets garbage three times: 1 try + 2 re-asks, then invalid.
    judge_server.script = ["garbage"] * 3
    args = cli_args(workspace, judge_server, "--max_concurrency", "1", "--max_invalid_retries",
                    "2")
    assert gpt_evals.main(args) == 0
    rows = read_table(table_path(workspace)).values()
    assert sum(int(r["invalid"]) for r in rows) == 1
    for row in rows:
        valid = int(row["win"]) + int(row["tie"]) + int(row["lose"])
        assert valid + int(row["invalid"]) == int(row["n"]) == N_QUESTIONS
        if int(row["invalid"]):
            assert float(row["win_rate"]) == pytest.approx(int(row["win"]) / valid)
    assert judge_server.received == 3 * N_QUESTIONS + 2
    sent = judge_server.received
    assert gpt_evals.main(args) == 0  # invalid is cached too: no new request
    assert judge_server.received == sent
    assert gpt_evals.main(args + ["--retry_invalid"]) == 0  # unless asked to re-ask it
    assert judge_server.received == sent + 1
    assert sum(int(r["invalid"]) for r in read_table(table_path(workspace)).values()) == 0


def test_exhausted_retries_stop_with_one_line_and_keep_progress(workspace, judge_server, capsys):
    judge_server.script = ["ok"] * 2 + ["500"] * 3
    args = cli_args(workspace, judge_server, "--max_concurrency", "1", "--max_retries", "2")
    assert gpt_evals.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: judge request still failing after 3")
    assert "rerun" in err[0] and "Traceback" not in err[0]
    assert judge_server.received == 5  # 2 answered, then 3 attempts on the third: bounded
    assert not table_path(workspace).exists()
    assert gpt_evals.main(args) == 0  # the server recovered: resume asks the rest only
    assert len(judge_server.answered) == 3 * N_QUESTIONS
    assert len(set(judge_server.answered)) == 3 * N_QUESTIONS


def test_all_pairs_ranks_methods_by_bradley_terry(workspace, judge_server):
    assert gpt_evals.main(cli_args(workspace, judge_server, "--all_pairs")) == 0
    out = table_path(workspace).parent
    import csv

    with open(out / "gpt_bradley_terry.csv", newline="") as handle:
        ranking = list(csv.DictReader(handle))
    # SCORES sums: amulet 18 > la 14 > pref 12 > base 9, and pairwise dominance agrees.
    assert [r["method"] for r in ranking] == ["amulet", "la", "pref", "base"]
    for row in ranking:
        assert float(row["ci_low"]) <= float(row["bt_theta"]) <= float(row["ci_high"])
    assert judge_server.received == len(list(combinations(METHODS, 2))) * N_QUESTIONS
    with open(out / "gpt_pairwise.csv", newline="") as handle:
        pairwise = {(r["method_a"], r["method_b"]): r for r in csv.DictReader(handle)}
    for (a, b), row in pairwise.items():
        want = expected_counts(a, b)
        assert (int(row["a_wins"]), int(row["ties"]), int(row["b_wins"])) == (
            want["win"], want["tie"], want["lose"],
        )


def test_bradley_terry_that_does_not_converge_keeps_the_tables_and_says_why(
    workspace, judge_server, capsys
):
    # amulet wins every comparison; with almost no regularisation the fit diverges.
    path = workspace / "responses/creative/Tiny-Model/toy/amulet.json"
    records = json.loads(path.read_text())
    for record in records:
        record["response"] = re.sub(r"score=\d+", "score=9", record["response"])
    path.write_text(json.dumps(records))
    out = table_path(workspace).parent
    assert gpt_evals.main(cli_args(workspace, judge_server, "--all_pairs")) == 0
    assert (out / "gpt_bradley_terry.csv").exists()
    capsys.readouterr()
    sent = judge_server.received
    args = cli_args(workspace, judge_server, "--all_pairs", "--bt_alpha", "1e-30")
    assert gpt_evals.main(args) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: Bradley-Terry ranking failed: ") and "converge" in err[0]
    assert "--bt_alpha" in err[0] and str(out) in err[0]
    assert judge_server.received == sent  # every judgment came from the cache
    assert "| target |" in captured.out  # the win-rate table is still printed
    table = read_table(table_path(workspace))
    assert {b: int(row["win"]) for b, row in table.items()} == dict.fromkeys(
        ("base", "pref", "la"), N_QUESTIONS)
    assert (out / "gpt_pairwise.csv").exists() and (out / "gpt_judgments.csv").exists()
    assert not (out / "gpt_bradley_terry.csv").exists()  # no stale ranking left behind
    assert "ranking failed" in (out / "gpt_bradley_terry.md").read_text()
    sidecar = json.loads((out / "gpt_eval_config.json").read_text())
    assert sidecar["bt_alpha"] == 1e-30 and "converge" in sidecar["ranking_error"]


def test_bootstrap_fits_that_do_not_converge_are_dropped_and_counted(
    workspace, judge_server, capsys
):
    # The full data fits; some resamples have a method that never loses and diverge.
    args = cli_args(workspace, judge_server, "--all_pairs", "--bt_alpha", "1e-30")
    assert gpt_evals.main(args) == 0
    err = capsys.readouterr().err.strip().splitlines()
    out = table_path(workspace).parent
    failed = json.loads((out / "gpt_eval_config.json").read_text())["counts"][
        "bt_failed_replicates"]
    assert 0 < failed < 200
    assert err == [f"warning: {failed} of 200 bootstrap fits did not converge; the intervals "
                   "and p_top use the others"]
    import csv

    with open(out / "gpt_bradley_terry.csv", newline="") as handle:
        ranking = list(csv.DictReader(handle))
    assert [r["method"] for r in ranking] == ["amulet", "la", "pref", "base"]
    assert sum(float(r["p_top"]) for r in ranking) == pytest.approx(1.0)
    for row in ranking:
        assert float(row["ci_low"]) <= float(row["bt_theta"]) <= float(row["ci_high"])


def test_judge_request_carries_the_paper_prompt_and_presets(workspace, judge_server):
    assert gpt_evals.main(cli_args(workspace, judge_server, "--max_questions", "1")) == 0
    assert len(judge_server.bodies) == 3  # one question against three baselines
    body = judge_server.bodies[0]
    assert body["model"] == "gpt-4o-2024-05-13"
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (
        0, 0.95, 5, 42,
    )
    assert body["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    user = body["messages"][1]["content"]
    assert f'Preference: """{PREFERENCE}"""' in user
    assert 'Question: """Question 0: how {now}?"""' in user
    assert user.endswith("Please provide the ranking that the majority of humans would give.")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda ws: (ws / "responses/creative/Tiny-Model/toy/la.json").unlink(),
         "missing la.json"),
        (lambda ws: _keep_records(ws / "responses/creative/Tiny-Model/toy/pref.json", 1),
         "the methods share no question"),
        (lambda ws: (ws / "responses/creative/Tiny-Model/toy/base.json").write_text("[{"),
         "is not valid JSON"),
    ],
    ids=["missing-method", "no-shared-question", "broken-json"],
)
def test_bad_input_is_one_line_and_nonzero_exit(workspace, judge_server, capsys, change, message):
    change(workspace)
    assert gpt_evals.main(cli_args(workspace, judge_server)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert judge_server.received == 0


def _keep_records(path: Path, start: int) -> None:
    """Keep only the records from ``start`` on, and give them other indices than the rest."""
    records = json.loads(path.read_text())[start:]
    for record in records:
        record["index"] += 100
    path.write_text(json.dumps(records))


def _drop_last_record(path: Path) -> None:
    records = json.loads(path.read_text())
    path.write_text(json.dumps(records[:-1]))


def test_missing_run_lists_what_exists(workspace, judge_server, capsys):
    args = cli_args(workspace, judge_server)
    args[args.index("--eval_data") + 1] = "nope"
    assert gpt_evals.main(args) == 2
    err = capsys.readouterr().err
    assert "--eval_data 'nope'" in err and "holds: toy" in err


def _run_cli(args: list[str], env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "evals" / "gpt_evals.py"), *args],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )


def test_sigkill_mid_run_then_resume_asks_each_comparison_exactly_once(workspace, judge_server):
    comparisons = 3 * N_QUESTIONS
    hang = 7  # requests 1..6 are answered and cached; the 7th hangs until the kill
    judge_server.hang_at = hang
    args = cli_args(workspace, judge_server, "--max_concurrency", "1", "--no_plot",
                    "--bootstrap", "0")
    cache = workspace / "results" / "judge_cache.jsonl"
    proc = _run_cli(args, dict(os.environ))
    deadline = time.monotonic() + 30
    while judge_server.received < hang and time.monotonic() < deadline:
        time.sleep(0.02)
    assert judge_server.received == hang
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    judge_server.release.set()
    assert proc.returncode == -signal.SIGKILL
    assert len(cache.read_text().splitlines()) == hang - 1
    with open(cache, "a") as handle:  # a torn last line, as a kill mid-write leaves it
        handle.write('{"key": "abc", "verd')
    resumed = _run_cli(args, dict(os.environ))
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    assert "torn last line" in err
    assert len(judge_server.answered) == comparisons
    assert len(set(judge_server.answered)) == comparisons  # no answered request repeated
    assert judge_server.received == comparisons + 1  # + the one killed in flight
    assert len(cache.read_text().splitlines()) == comparisons
    table = read_table(table_path(workspace))
    assert {k: int(table["la"][k]) for k in ("win", "tie", "lose")} == expected_counts(
        "amulet", "la"
    )


def _all_text_under(root: Path) -> str:
    return "\n".join(
        p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file()
    )


def test_api_key_never_reaches_files_or_output(workspace, judge_server, capfd):
    # A whole run in a subprocess, progress bars on: stdout, stderr and every file.
    args = [a for a in cli_args(workspace, judge_server, "--all_pairs", "--bootstrap", "20")
            if a != "--no_progress"]
    ok = _run_cli(args, dict(os.environ))
    out, err = ok.communicate(timeout=60)
    assert ok.returncode == 0, err
    assert f"Bearer {SECRET}" in judge_server.auth  # the key was really sent
    texts = [out, err]
    # Error path: the server echoes the Authorization header in its 401 message.
    judge_server.script = ["401"]
    fresh = cli_args(workspace, judge_server, "--max_concurrency", "1", "--cache_path",
                     str(workspace / "results" / "other_cache.jsonl"))
    assert gpt_evals.main(fresh) == 1
    captured = capfd.readouterr()
    assert "AuthenticationError (HTTP 401)" in captured.err
    texts += [captured.out, captured.err]
    # Error path 2: the key inside a base URL that cannot be reached.
    unreachable = cli_args(workspace, judge_server, "--max_retries", "0", "--cache_path",
                           str(workspace / "results" / "third.jsonl"))
    unreachable[unreachable.index("--judge_base_url") + 1] = f"http://{SECRET}@127.0.0.1:9/v1"
    assert gpt_evals.main(unreachable) == 1
    captured = capfd.readouterr()
    assert captured.err.startswith("error: judge request")
    texts += [captured.out, captured.err, _all_text_under(workspace)]
    for text in texts:
        assert "SECRET123" not in text


def test_missing_key_is_one_clear_line(workspace, judge_server, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    assert gpt_evals.main(cli_args(workspace, judge_server)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "OPENAI_API_KEY" in err[0] and "not cached" in err[0]
    assert judge_server.received == 0


def test_dry_run_counts_without_asking(workspace, judge_server, capsys):
    assert gpt_evals.main(cli_args(workspace, judge_server, "--dry_run")) == 0
    assert (f"{N_QUESTIONS} questions x 3 pairs: {3 * N_QUESTIONS} comparisons, "
            f"{3 * N_QUESTIONS} distinct judge requests, 0 cached, {3 * N_QUESTIONS} to ask"
            in capsys.readouterr().out)
    assert judge_server.received == 0


def test_dry_run_says_why_requests_are_fewer_than_comparisons(workspace, judge_server, capsys):
    # la wrote pref's responses: la-vs-pref shows two identical texts, and base-vs-la shows
    # base-vs-pref's texts (one request, one answer) wherever the seeded orders agree
    from itertools import combinations

    from evals.judge.judge import presentation_order

    run = workspace / "responses/creative/Tiny-Model/toy"
    (run / "la.json").write_text((run / "pref.json").read_text())
    assert gpt_evals.main(cli_args(workspace, judge_server, "--dry_run", "--all_pairs")) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    texts = {m: json.loads((run / f"{m}.json").read_text()) for m in METHODS}
    shown = {(i, *(texts[m][i]["response"] for m in presentation_order(42, i, a, b)))
             for a, b in combinations(METHODS, 2) for i in range(N_QUESTIONS)}
    repeats = 6 * N_QUESTIONS - len(shown)
    assert repeats > 0
    assert line == (
        f"creative / Tiny-Model / toy: {N_QUESTIONS} questions x 6 pairs: {6 * N_QUESTIONS} "
        f"comparisons, {len(shown)} distinct judge requests ({repeats} show the same question "
        "and texts as other comparisons and share their answers), 0 cached, "
        f"{len(shown)} to ask; {N_QUESTIONS} comparisons show two identical responses "
        "(asked too)"), line
    assert judge_server.received == 0


def test_methods_are_compared_on_the_questions_they_share(workspace, judge_server, capsys):
    # pref answered one question fewer (e.g. a run with a smaller --limit): the others are
    # compared with it on the N - 1 questions all of them answered, said in one line
    _drop_last_record(workspace / "responses/creative/Tiny-Model/toy/pref.json")
    assert gpt_evals.main(cli_args(workspace, judge_server, "--max_questions", "3")) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"note: creative/Tiny-Model/toy: comparing {len(METHODS)} methods on the "
                   f"{N_QUESTIONS - 1} questions they all answered (base has {N_QUESTIONS}, "
                   f"la has {N_QUESTIONS}, amulet has {N_QUESTIONS})"], err
    assert judge_server.received == 3 * 3  # --max_questions 3 of the shared ones, 3 pairs
    table = read_table(table_path(workspace))
    assert {b: sum(int(row[k]) for k in ("win", "tie", "lose")) for b, row in table.items()} \
        == dict.fromkeys(("base", "pref", "la"), 3)
