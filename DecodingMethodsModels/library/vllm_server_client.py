"""Two-prompt decoding (la, amulet, implicit PAD) through vLLM's OpenAI-compatible server with
the pairing processor loaded into it (backends/vllm_pairing.py; the command is in
backends/README.md, "The OpenAI-compatible server"). Standard library only: a client needs
neither vLLM nor torch.

Each question is two /v1/completions requests (preference and base prompt, as token ids), sent
at once from two threads, greedy, with `vllm_xargs["dmm"]` the pair spec as a JSON string and a
pair key new for every attempt. The client judges a pair by its two answers, with the rule the
in-process driver uses (backends/vllm_pair_spec.pair_verdict): the processor forces a row it
cannot serve to one of two sentinels, stop tokens that are no EOS id and that no rule chooses
(`sentinel`: out of step; `unusable`: scores not finite), so a pair is accepted only when both
answers hold the same ids and no sentinel; one out of step is re-sent (up to `retries` more
times), one with unusable scores is a one-line error.

What it cannot see: the server's flags. It checks once that the server refuses a spec with a
role that does not exist (only the processor reads the spec). The server should keep chunked
prefill off and start pairs with the scheduler of backends/vllm_pair_scheduler.py: without it,
a pair's first request often starts alone (on CPU about four pairs in five sent one at a time)
and the pair is re-sent.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from DecodingMethodsModels.backends.vllm_pair_spec import (
    ACCEPTED,
    KEY,
    UNUSABLE,
    PairSpec,
    check_spec,
    pair_verdict,
)
from DecodingMethodsModels.errors import UserError

RETRIES = 4  # sends of one pair after the first, before the one-line error


@dataclass(frozen=True)
class PairRule:
    """The rule and settings of a pair (vllm_pair_spec.PairSpec's): "la" (params: ratio),
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
    request never waits for a free row. `sentinels`: (out of step, unusable), two ids that are
    no EOS id (an unused special token, or an id past the tokenizer's last token: no rule
    chooses them). `resends[k]`: question k's re-sends in the last call."""

    def __init__(self, url: str, model: str, rule: PairRule, max_tokens: int,
                 eos_ids: list[int], sentinels: tuple[int, int], retries: int = RETRIES,
                 max_pairs: int = 8, timeout: float = 600.0):
        if set(sentinels) & set(eos_ids) or len(set(sentinels)) != 2:
            raise ValueError(f"the sentinels {tuple(sentinels)} must be two ids that are no EOS "
                             "id: a broken pair could not be told from a finished one")
        self.url, self.model, self.rule = url, model, rule
        self.sentinel, self.unusable = sentinels
        self.max_tokens, self.stop_ids = max_tokens, [*eos_ids, *sentinels]
        check_spec(self.spec("check", "pref", 0), self.stop_ids, 0.0)  # ValueError if wrong
        self.retries, self.max_pairs, self.timeout = retries, max_pairs, timeout
        self.resends: list[int] = []
        self._requests: ThreadPoolExecutor | None = None

    def spec(self, key: str, role: str, seed: int) -> PairSpec:
        return PairSpec(pair=key, role=role, rule=self.rule.rule, params=self.rule.params,
                        sentinel=self.sentinel, unusable=self.unusable, seed=seed,
                        sampling=self.rule.sampling)

    def xargs(self, key: str, role: str, seed: int) -> dict:
        return self.spec(key, role, seed).as_xargs()

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
                                  "params": {}, "sentinel": self.sentinel,
                                  "unusable": self.unusable})}
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
            verdict = pair_verdict(ids, base_ids, self.sentinel, self.unusable)
            if verdict == ACCEPTED:
                return ids
            if verdict == UNUSABLE:
                raise UserError(f"the scores became NaN (or nothing finite) for question {k}: "
                                "the model's weights or the rule's settings give no usable "
                                "scores")
        raise UserError(
            f"the vLLM server could not keep question {k}'s two requests in step in "
            f"{self.retries + 1} tries: start the server with "
            "--scheduler-cls DecodingMethodsModels.backends.vllm_pair_scheduler.PairScheduler "
            "and chunked prefill off, lower max_pairs, give it more KV cache")
