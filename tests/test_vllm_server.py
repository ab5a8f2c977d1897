"""The pairing processor behind vLLM's OpenAI-compatible server: the pair spec as a JSON string
(`vllm_xargs` holds no nested objects), the scheduler that starts a pair's two requests in one
step, and the client (library/vllm_server_client.py) against a real server on CPU with a tiny
sharpened model: the hf backend's tokens for la, amulet and implicit PAD, a partner a little
late decoded in step, broken pairs (a partner later than the scheduler waits) caught and
re-sent, never accepted."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from vllm_helpers import build_sharp_model, hf_tokens, prompts, require_vllm

require_vllm()

from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate  # noqa: E402

from DecodingMethodsModels.backends import vllm_pair_scheduler, vllm_pairing  # noqa: E402
from DecodingMethodsModels.backends.vllm_pairing import (  # noqa: E402
    PairedRuleProcessor,
    PairSpec,
    spec_of,
)
from DecodingMethodsModels.errors import UserError  # noqa: E402
from DecodingMethodsModels.library import vllm_server_client as client  # noqa: E402
from DecodingMethodsModels.pipeline.methods import DecodeSettings  # noqa: E402
from DecodingMethodsModels.rules.combine import la_rule  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
SPEC = PairSpec(pair="q7", role="base", rule="amulet", sentinel=16, unusable=15, seed=3,
                params={"iterations": 5, "alpha": 2.0, "player_lambda": 2.0, "eta": 10.0,
                        "solver": "closed_form"})
LA = client.PairRule("la", {"ratio": 2.0})
AMULET = client.PairRule("amulet", dict(SPEC.params))
STEPS = 12
HOLD_S = 2.0  # the test server's longest wait for a partner


# ----- the spec as a JSON string, without a server ------------------------------------------


def test_spec_read_from_a_dict_or_its_json_string():
    assert spec_of(SPEC.as_extra_args()) == SPEC
    assert spec_of(SPEC.as_xargs()) == SPEC
    assert spec_of({"dmm": json.dumps(asdict(SPEC))}) == SPEC
    assert spec_of(None) is None and spec_of({"other": 1}) is None


@pytest.mark.parametrize("value, message", [
    ("{not json", "not valid JSON"),
    (json.dumps([1, 2]), "must be a pair spec object"),
    (7, "must be a pair spec object"),
    (json.dumps({"pair": "q", "role": "pref"}), "not a pair spec"),
])
def test_bad_spec_is_a_clear_value_error(value, message):
    with pytest.raises(ValueError, match=message):
        spec_of({"dmm": value})
    params = SamplingParams(temperature=0.0, stop_token_ids=[16], extra_args={"dmm": value})
    with pytest.raises(ValueError, match=message):
        PairedRuleProcessor.validate_params(params)


@pytest.mark.parametrize("params, sampling", [
    ({}, None), ({"ratio": "2"}, None), ({"ratio": True}, None), ({"ratio": 2.0, "x": 1}, None),
    ([2.0], None), ({"ratio": 2.0}, {"temp": 1.0}), ({"ratio": 2.0}, {"top_p": "1"}),
])
def test_settings_the_rule_cannot_read_are_refused_before_the_engine(params, sampling):
    """Caught in validate_params (the server's one-line 400): inside `apply` they would stop
    the engine, and the server with it."""
    spec = {"pair": "q", "role": "pref", "rule": "la", "params": params, "sentinel": 16,
            "unusable": 15, "sampling": sampling}
    xargs = {"dmm": json.dumps(spec)}
    with pytest.raises(ValueError, match="pair spec: (rule la needs params|ratio must be|"
                                         "sampling)"):
        PairedRuleProcessor.validate_params(
            SamplingParams(temperature=0.0, stop_token_ids=[16, 15], extra_args=xargs))


@pytest.mark.parametrize("method, do_sample, mode", [
    ("la", False, "greedy"), ("la", True, "greedy"), ("amulet", False, "greedy"),
    ("amulet", True, "greedy"), ("pad", False, "greedy"), ("pad", False, "topk"),
])
def test_the_backends_own_specs_pass_validation(method, do_sample, mode):
    from DecodingMethodsModels.backends.vllm_backend import VllmRequests
    from DecodingMethodsModels.pipeline.guided_config import GuidedRunConfig
    from DecodingMethodsModels.rules.sampling import SamplingSettings

    settings = DecodeSettings(max_new_tokens=4, eos_ids=[2], pad_id=2,
                              sampling=SamplingSettings(do_sample, 0.7, 5, 0.9))
    guided = GuidedRunConfig(rm_weight=0.8, topk=10, mode=mode,
                             sample_temp=0.5 if mode == "topk" else None, line=0)
    from DecodingMethodsModels.backends.vllm_driver import paired

    key = f"own-{method}-{do_sample}-{mode}"  # as the driver sends them: key and sentinels set
    for params in VllmRequests(settings).pair_params(method, 3, guided):
        PairedRuleProcessor.validate_params(paired(params, key, (16, 15)))


def test_processor_pairs_rows_whose_spec_is_a_json_string():
    processor = PairedRuleProcessor(None, torch.device("cpu"), False)
    added = []
    for row, role in enumerate(("pref", "base")):
        xargs = PairSpec(pair="json-q", role=role, rule="la", params={"ratio": 2.0},
                         sentinel=10, unusable=11).as_xargs()
        params = SamplingParams(temperature=0.0, stop_token_ids=[2, 10, 11], extra_args=xargs)
        PairedRuleProcessor.validate_params(params)
        added.append((row, params, [5 + row], []))
    processor.update_state(BatchUpdate(batch_size=2, removed=[], added=added, moved=[]))
    torch.manual_seed(0)
    logits = torch.randn(2, 12)
    pref, base = (torch.log_softmax(row.unsqueeze(0), dim=-1) for row in logits)
    want = int(la_rule(2.0)(pref, base)[:, :10].argmax())  # 10 and 11 are the sentinels
    out = processor.apply(logits)
    assert (torch.isfinite(out).sum(dim=-1) == 1).all()
    assert out.argmax(dim=-1).tolist() == [want, want]


def test_client_spec_is_the_processors_pair_spec():
    pair = client.PairClient("http://unused", "m", AMULET, 4, [2], (16, 15))
    xargs = pair.xargs("q7", "base", 3)
    assert client.KEY == vllm_pairing.KEY and spec_of(xargs) == SPEC


def test_client_imports_neither_vllm_nor_torch():
    code = ("import sys, DecodingMethodsModels.library.vllm_server_client; "
            "print(sorted({'vllm', 'torch', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_client_refuses_an_eos_sentinel():
    with pytest.raises(ValueError, match="EOS"):
        client.PairClient("http://unused", "m", LA, 4, [0, 2], (2, 16))


def test_client_stops_at_a_server_that_does_not_pair(monkeypatch):
    """Without the processor a lone request decodes on: one line says how to start the
    server, before any question is sent."""
    sent = []
    monkeypatch.setattr(client, "complete", lambda url, model, prompt, *rest: sent.append(
        prompt) or [5, 6])
    pair = client.PairClient("http://unused", "m", LA, 4, [2], (16, 15))
    with pytest.raises(UserError, match="--logits-processors") as err:
        pair.decode([[1, 2], [3]], [[4], [5]])
    assert sent == [[1, 2]] and "\n" not in str(err.value)


# ----- the scheduler's choice, on hand-made queues -------------------------------------------


def request(rid: str, pair: str | None = None, role: str = "pref", output=()):
    extra = None if pair is None else PairSpec(pair=pair, role=role, rule="la",
                                               params={"ratio": 2.0}, sentinel=16,
                                               unusable=15).as_xargs()
    return SimpleNamespace(request_id=rid, sampling_params=SamplingParams(extra_args=extra),
                           num_computed_tokens=0, output_token_ids=list(output))


def held_ids(waiting, running=(), rows=16, seen=None) -> list[str]:
    from vllm.v1.core.sched.request_queue import FCFSRequestQueue

    scheduler = vllm_pair_scheduler.PairScheduler.__new__(vllm_pair_scheduler.PairScheduler)
    scheduler.waiting, scheduler.running = FCFSRequestQueue(waiting), list(running)
    scheduler.requests = {r.request_id: r for r in (*waiting, *running)}
    scheduler.max_num_active_reqs, scheduler._seen = rows, dict(seen or {})
    return [r.request_id for r in scheduler._held()]


def test_scheduler_holds_a_request_until_its_partner_comes():
    waiting = [request("a1", "a"), request("b1", "b"), request("plain"), request("b2", "b", "base")]
    assert held_ids(waiting) == ["a1"]
    late = time.monotonic() - vllm_pair_scheduler.HOLD_S - 1
    assert held_ids(waiting, seen={"a1": ("a", late)}) == []  # waited long enough: let go


def test_scheduler_starts_a_pair_only_with_two_free_rows():
    waiting = [request("plain"), request("b1", "b"), request("b2", "b", "base")]
    assert held_ids(waiting, running=[request(f"r{i}") for i in range(13)]) == []
    assert held_ids(waiting, running=[request(f"r{i}") for i in range(14)]) == ["b1", "b2"]


def test_scheduler_lets_broken_or_resumed_requests_go():
    running_partner = [request("c1", "c")]
    assert held_ids([request("c2", "c", "base")], running=running_partner) == []
    assert held_ids([request("d1", "d", output=[5, 6])]) == []  # preempted, resuming


# ----- a real server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n"
                               + log.read_text()[-3000:])
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"no healthy server after {timeout} s:\n" + log.read_text()[-3000:])


def stop(process: subprocess.Popen) -> None:
    """The server and its engine processes (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def tiny(tokenizer, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    folder = build_sharp_model("llama", tokenizer, tmp_path_factory.mktemp("server") / "m")
    return AutoModelForCausalLM.from_pretrained(folder).eval(), folder


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    """The URL of a vLLM OpenAI server on CPU with the pairing processor loaded; killed after
    the module."""
    folder = tiny[1]
    port, log = free_port(), tmp_path_factory.mktemp("server_log") / "server.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), VLLM_USE_V2_MODEL_RUNNER="0",
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", DMM_PAIR_HOLD_S=str(HOLD_S))
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(folder), "--port", str(port), "--host", "127.0.0.1",
               "--generation-config", "vllm", "--logits-processors",
               "DecodingMethodsModels.backends.vllm_pairing:PairedRuleProcessor",
               "--scheduler-cls",
               "DecodingMethodsModels.backends.vllm_pair_scheduler.PairScheduler",
               "--no-enable-chunked-prefill", "--enforce-eager", "--dtype", "float32",
               "--max-model-len", "512", "--max-num-seqs", "16",
               "--kv-cache-memory-bytes", str(64 * 2**20)]
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log, timeout=240)
        yield url, str(folder)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def case(tiny, tokenizer):
    from DecodingMethodsModels.models.loading import eos_token_ids, pad_token_id

    model = tiny[0]
    qs = [f"Question {i}: name {'a few ' * (i % 5)}things that are green." for i in range(16)]
    pref, base = prompts(tokenizer, qs)
    eos = eos_token_ids(model, tokenizer)
    settings = DecodeSettings(max_new_tokens=STEPS, eos_ids=eos,
                              pad_id=pad_token_id(tokenizer, eos),
                              iteration_num=SPEC.params["iterations"])
    # special tokens never written (what vllm_driver.engine_sentinels picks for this tokenizer)
    sentinels = tuple(tokenizer.convert_tokens_to_ids(["<empty_output>", "<jupyter_script>"]))
    return pref, base, settings, sentinels


def pair_client(server, case, rule=LA, cls=client.PairClient, **extra):
    url, model = server
    _, _, settings, sentinels = case
    return cls(url, model, rule, STEPS, settings.eos_ids, sentinels, **extra)


@pytest.fixture(scope="module")
def la_tokens(tiny, case):
    pref, base, settings, sentinels = case
    want = hf_tokens(tiny[0], "la", pref, base, settings)
    assert not any(set(sentinels) & set(ids) for ids in want)
    return want


@pytest.mark.parametrize("method, rule", [
    ("la", LA), ("amulet", AMULET), ("pad", client.PairRule("pad", {"weight": 0.8, "topk": 10})),
])
def test_server_gives_the_hf_backends_tokens(server, tiny, case, la_tokens, method, rule):
    from DecodingMethodsModels.pipeline.guided_config import GuidedRunConfig

    pref, base, settings, sentinels = case
    guided = GuidedRunConfig(rm_weight=0.8, topk=10, mode="greedy", sample_temp=None, line=0)
    want = la_tokens if method == "la" else hf_tokens(tiny[0], method, pref, base, settings,
                                                      guided)
    assert not any(set(sentinels) & set(ids) for ids in want)
    pair = pair_client(server, case, rule)
    assert pair.decode(pref, base) == want
    print(f"{method}: re-sends per question {pair.resends}")


class DelayedPartner(client.PairClient):
    """Sends each pair's base request 0.3 s after its preference request: without the
    scheduler, the preference request would start alone and the pair break."""

    def send_pair(self, pref, base, key, seed, attempt):
        first = self._requests.submit(client.complete, self.url, self.model, pref,
                                      self.xargs(key, "pref", seed), self.max_tokens,
                                      self.stop_ids, self.timeout)
        time.sleep(0.3)
        second = client.complete(self.url, self.model, base, self.xargs(key, "base", seed),
                                 self.max_tokens, self.stop_ids, self.timeout)
        return first.result(), second


def test_partner_a_little_late_is_waited_for(server, case, la_tokens):
    pref, base, _, _ = case
    pair = pair_client(server, case, cls=DelayedPartner)
    assert pair.decode(pref[:8], base[:8]) == la_tokens[:8]
    assert pair.resends == [0] * 8  # the scheduler started each pair in one step


class LatePartner(client.PairClient):
    """Sends every pair's base request only once its preference request has come back (the
    first attempt of each pair): later than the scheduler waits, so the pair breaks."""

    def send_pair(self, pref, base, key, seed, attempt):
        if attempt > 0:
            return super().send_pair(pref, base, key, seed, attempt)
        first = client.complete(self.url, self.model, pref, self.xargs(key, "pref", seed),
                                self.max_tokens, self.stop_ids, self.timeout)
        return first, client.complete(self.url, self.model, base,
                                      self.xargs(key, "base", seed), self.max_tokens,
                                      self.stop_ids, self.timeout)


def test_late_partner_is_resent_not_accepted(server, case, la_tokens):
    pref, base, _, _ = case
    pair = pair_client(server, case, cls=LatePartner)
    assert pair.decode(pref[:8], base[:8]) == la_tokens[:8]
    assert min(pair.resends) >= 1  # every first attempt was caught


def test_no_retries_left_is_one_line_error(server, case):
    pref, base, _, _ = case
    with pytest.raises(UserError, match="in step") as err:
        pair_client(server, case, cls=LatePartner, retries=0).decode(pref[:2], base[:2])
    assert "\n" not in str(err.value)


def test_lone_request_ends_on_the_sentinel_and_why_it_is_no_eos(server, case):
    """A lone request (its partner never sent) ends on the sentinel once the scheduler stops
    waiting. With an EOS id as sentinel, a partner later than that would give both rows
    [EOS]: equal answers that look finished, which is why the client wants a sentinel that is
    no EOS."""
    url, model = server
    pref, base, settings, sentinels = case
    pair = pair_client(server, case)
    assert client.complete(url, model, pref[0], pair.xargs(uuid.uuid4().hex, "pref", 0), STEPS,
                           pair.stop_ids, 60) == [sentinels[0]]
    eos = settings.eos_ids[0]
    spec = dict(pair="late-" + uuid.uuid4().hex, rule="la", params={"ratio": 2.0}, sentinel=eos,
                unusable=sentinels[1])
    answers = [client.complete(url, model, prompt, PairSpec(role=role, **spec).as_xargs(), STEPS,
                               [*settings.eos_ids, sentinels[1]], 60)
               for role, prompt in (("pref", pref[0]), ("base", base[0]))]
    assert answers == [[eos], [eos]]


AMULET_PARAMS = dict(SPEC.params)
BAD_REQUESTS = [  # (what is wrong, spec fields that replace a valid la spec's, refusal)
    ("unknown rule", {"rule": "beam"}, "rule one of"),
    ("unknown role", {"role": "judge"}, "role must be pref or base"),
    ("empty pair key", {"pair": ""}, "pair must be a non-empty string"),
    ("missing ratio", {"params": {}}, "rule la needs params"),
    ("unknown param", {"params": {"ratio": 2.0, "x": 1}}, "rule la needs params"),
    ("negative ratio", {"params": {"ratio": -1.0}}, "ratio must be"),
    ("ratio a string", {"params": {"ratio": "2"}}, "ratio must be"),
    ("unknown solver", {"rule": "amulet", "params": {**AMULET_PARAMS, "solver": "newton"}},
     "unknown Amulet solver"),
    ("float iterations", {"rule": "amulet",
                          "params": {**AMULET_PARAMS, "solver": "iterative", "iterations": 2.5}},
     "iterations must be an integer"),
    ("huge iterations", {"rule": "amulet", "params": {**AMULET_PARAMS, "iterations": 10**9}},
     "iterations must be an integer"),
    ("eta 0", {"rule": "amulet", "params": {**AMULET_PARAMS, "eta": 0}}, "eta must be"),
    ("temperature 0", {"sampling": {"temperature": 0.0}}, "temperature must be"),
    ("top_p 0", {"sampling": {"temperature": 1.0, "top_p": 0.0}}, "top_p must be"),
    ("top_p above 1", {"sampling": {"temperature": 1.0, "top_p": 1.5}}, "top_p must be"),
    ("top_k 2.5", {"sampling": {"temperature": 1.0, "top_k": 2.5}}, "top_k must be an integer"),
    ("top_k negative", {"sampling": {"temperature": 1.0, "top_k": -1}}, "top_k must be"),
    ("unknown sampling key", {"sampling": {"temperature": 1.0, "min_p": 0.1}},
     "sampling of rule la"),
    ("pad topk 0", {"rule": "pad", "params": {"weight": 0.8, "topk": 0}}, "topk must be"),
    ("pad topk 1.5", {"rule": "pad", "params": {"weight": 0.8, "topk": 1.5}}, "topk must be"),
    ("pad topk past the vocabulary", {"rule": "pad", "params": {"weight": 0.8, "topk": 50_000}},
     "topk must be"),
    ("sentinel not a stop id", {"sentinel": 17}, "sentinel token must be one of"),
    ("sentinels equal", {"unusable": "SENTINEL"}, "two different tokens"),
    ("seed negative", {"seed": -1}, "seed must be"),
]


def test_server_refuses_every_bad_request_survives_and_still_serves(server, tiny, case,
                                                                     la_tokens):
    """Each bad pair spec is the server's one-line 400 before it reaches the engine; a pair
    key and role used twice is refused; the server then still decodes a valid pair as the
    hf backend does."""
    url, model = server
    pref, base, settings, (sentinel, unusable) = case
    stops = [*settings.eos_ids, sentinel, unusable]
    valid = dict(role="pref", rule="la", params={"ratio": 2.0}, sentinel=sentinel,
                 unusable=unusable, seed=0, sampling=None)
    for what, change, refusal in BAD_REQUESTS:
        spec = {**valid, "pair": uuid.uuid4().hex, **change}
        spec = {k: sentinel if v == "SENTINEL" else v for k, v in spec.items()}
        with pytest.raises(UserError, match=rf"refused a request \(400\).*{refusal}") as err:
            client.complete(url, model, pref[0], {"dmm": json.dumps(spec)}, STEPS, stops, 60)
        assert "\n" not in str(err.value), what
    reused = PairSpec(pair=uuid.uuid4().hex, **valid).as_xargs()
    assert client.complete(url, model, pref[0], reused, STEPS, stops, 60) == [sentinel]
    with pytest.raises(UserError, match=r"\(400\).*already used"):
        client.complete(url, model, pref[0], reused, STEPS, stops, 60)
    assert pair_client(server, case).decode(pref[:4], base[:4]) == la_tokens[:4]


def test_sampled_pairs_follow_their_seeds(server, case, la_tokens):
    """The processor draws each question's token from its seed and the step: the same seeds
    give the same answers whatever the order, other seeds other answers."""
    pref, base, _, _ = case
    rule = client.PairRule("la", {"ratio": 2.0}, {"temperature": 20.0, "top_k": None,
                                                  "top_p": 1.0})
    pair = pair_client(server, case, rule)
    seeds = list(range(8))
    first = pair.decode(pref[:8], base[:8], seeds)
    assert first != la_tokens[:8]
    assert pair.decode(pref[7::-1], base[7::-1], seeds[::-1]) == first[::-1]
    assert pair.decode(pref[:8], base[:8], [s + 100 for s in seeds]) != first
