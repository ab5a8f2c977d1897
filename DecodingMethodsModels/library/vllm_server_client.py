"""Two-prompt decoding (la, amulet, implicit PAD) through vLLM's OpenAI-compatible server with
the pairing processor loaded into it (backends/vllm_pairing.py; the command is in
backends/README.md, "The OpenAI-compatible server"). Standard library only: a client needs
neither vLLM nor torch.

Each question is two /v1/completions requests (preference and base prompt, as token ids), sent
at once from two threads, greedy, with `vllm_xargs["dmm"]` the pair spec as a JSON string and a
pair key new for every attempt. The processor's out-of-step records stay in the server's
process, so the client judges a pair by its two answers alone:

- A row that the processor finds without its partner or at another output length (a partner
  arriving a step late, a request lost, preemption), or whose combined scores are not finite,
  is forced to the sentinel, a stop token, and ends on it. Every broken pair therefore has an
  answer ending on the sentinel; a pair is accepted only when its two answers hold the same
  token ids and do not end on it, and re-sent otherwise (up to `retries` more times).
- So the sentinel must be a stop token that is not an EOS id and that the model never writes
  (an unused special token). With an EOS sentinel a broken pair can look finished: a partner
  arriving after the first row's first step leaves each row alone in turn, and both answers are
  [sentinel]; a row preempted at length k whose partner then runs alone gives both the same k
  tokens and the sentinel. The client refuses an EOS sentinel.
- What it cannot see: the server's flags. It checks once that the server refuses a spec with
  a role that does not exist (only the processor reads the spec). The server must keep chunked
  prefill off and run one engine (no --data-parallel-size > 1: a pair's rows share a batch),
  and should start pairs with the scheduler of backends/vllm_pair_scheduler.py: without it, a
  pair's first request often starts alone (on CPU about four pairs in five sent one at a time)
  and the pair is re-sent. A rule that picks the sentinel itself, or scores that are not
  finite, look like a broken pair: re-sent, then the one-line error.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from DecodingMethodsModels.errors import UserError

KEY = "dmm"  # vllm_pairing.KEY; not imported, so that the client runs without vLLM
RETRIES = 4  # sends of one pair after the first, before the one-line error


@dataclass(frozen=True)
class PairRule:
    """The rule and settings of a pair (vllm_pairing.PairSpec's): "la" (params: ratio),
    "amulet" (iterations, alpha, player_lambda, eta, solver) or "pad" (weight, topk);
    `sampling` None for argmax, else the processor's draw settings."""

    rule: str
    params: dict
    sampling: dict | None = None


def complete(url: str, model: str, prompt: list[int], xargs: dict, max_tokens: int,
             stop_ids: list[int], timeout: float) -> list[int]:
    """One greedy completion of `prompt` (token ids): its answer's token ids, the stop token
    included."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stop_token_ids": stop_ids, "return_token_ids": True,
            "vllm_xargs": xargs}
    request = urllib.request.Request(f"{url.rstrip('/')}/v1/completions",
                                     json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return list(json.load(response)["choices"][0]["token_ids"])
    except urllib.error.HTTPError as err:
        raise UserError(f"the vLLM server at {url} refused a request ({err.code}): "
                        f"{_server_message(err)}") from None
    except (urllib.error.URLError, TimeoutError) as err:
        raise UserError(f"no answer from a vLLM server at {url}: "
                        f"{getattr(err, 'reason', err)}") from None


def _server_message(err: urllib.error.HTTPError) -> str:
    text = err.read().decode(errors="replace")
    try:
        text = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        pass
    return " ".join(str(text).split())  # one line


class PairClient:
    """Decodes questions as pairs of requests to one vLLM server. `max_pairs` pairs at most in
    flight: keep 2 * max_pairs within the server's --max-num-seqs, so that a pair's second
    request never waits for a free row. `resends[k]`: question k's re-sends in the last call."""

    def __init__(self, url: str, model: str, rule: PairRule, max_tokens: int,
                 eos_ids: list[int], sentinel: int, retries: int = RETRIES, max_pairs: int = 8,
                 timeout: float = 600.0):
        if sentinel in eos_ids:
            raise ValueError(f"the sentinel {sentinel} is an EOS id: a broken pair could not be "
                             "told from a finished one; pass a stop token the model never "
                             "writes (an unused special token)")
        self.url, self.model, self.rule, self.sentinel = url, model, rule, sentinel
        self.max_tokens, self.stop_ids = max_tokens, [*eos_ids, sentinel]
        self.retries, self.max_pairs, self.timeout = retries, max_pairs, timeout
        self.resends: list[int] = []
        self._requests: ThreadPoolExecutor | None = None

    def xargs(self, key: str, role: str, seed: int) -> dict:
        spec = {"pair": key, "role": role, "rule": self.rule.rule, "params": self.rule.params,
                "sentinel": self.sentinel, "seed": seed, "sampling": self.rule.sampling}
        return {KEY: json.dumps(spec)}

    def decode(self, pref_prompts: list[list[int]], base_prompts: list[list[int]],
               seeds: list[int] | None = None) -> list[list[int]]:
        """Each question's answer token ids (the stop token included), in question order."""
        seeds = seeds or [0] * len(pref_prompts)
        self.resends = [0] * len(pref_prompts)
        if not pref_prompts:
            return []
        questions = ThreadPoolExecutor(self.max_pairs)
        with ThreadPoolExecutor(2 * self.max_pairs) as self._requests:
            try:
                self.check_processor(pref_prompts[0])
                futures = [questions.submit(self._question, k, *job) for k, job in
                           enumerate(zip(pref_prompts, base_prompts, seeds, strict=True))]
                return [future.result() for future in futures]
            finally:  # after an error, no question not yet started is sent
                questions.shutdown(cancel_futures=True)

    def check_processor(self, prompt: list[int]) -> None:
        """The server must refuse a pair spec with a role that does not exist: only the
        pairing processor reads vllm_xargs["dmm"] (and nothing is decoded)."""
        probe = {KEY: json.dumps({"pair": "probe", "role": "probe", "rule": self.rule.rule,
                                  "params": {}, "sentinel": self.sentinel})}
        try:
            complete(self.url, self.model, prompt, probe, 1, self.stop_ids, self.timeout)
        except UserError as err:
            if "pair spec" in str(err):
                return
            raise
        raise UserError(f"the vLLM server at {self.url} does not pair requests: start it "
                        "with --logits-processors DecodingMethodsModels.backends."
                        "vllm_pairing:PairedRuleProcessor")

    def send_pair(self, pref: list[int], base: list[int], key: str, seed: int,
                  attempt: int) -> tuple[list[int], list[int]]:
        """The two answers of one attempt, both requests sent at once."""
        futures = [self._requests.submit(complete, self.url, self.model, prompt,
                                         self.xargs(key, role, seed), self.max_tokens,
                                         self.stop_ids, self.timeout)
                   for role, prompt in (("pref", pref), ("base", base))]
        return futures[0].result(), futures[1].result()

    def _question(self, k: int, pref: list[int], base: list[int], seed: int) -> list[int]:
        for attempt in range(self.retries + 1):
            self.resends[k] = attempt
            ids, base_ids = self.send_pair(pref, base, uuid.uuid4().hex, seed, attempt)
            if ids == base_ids and ids[-1:] != [self.sentinel]:
                return ids
        raise UserError(
            f"the vLLM server could not keep question {k}'s two requests in step in "
            f"{self.retries + 1} tries (or its scores were not finite): start the server with "
            "--scheduler-cls DecodingMethodsModels.backends.vllm_pair_scheduler.PairScheduler "
            "and chunked prefill off, lower max_pairs, give it more KV cache")
