"""A vLLM engine and the driver that feeds it: single requests (base, pref) and whole pairs
(la, amulet, implicit PAD) admitted between engine steps, each pair judged by what the engine
returns (vllm_pair_spec.pair_verdict) and a broken one decoded again as soon as it is found.

The engine core runs in this process by default (`EngineSettings.engine_process` puts it in
a process of its own; the acceptance rule reads only the returned tokens, so both are
correct, and tensor-parallel workers always run in other processes), on vLLM's V1 model
runner (VLLM_USE_V2_MODEL_RUNNER=0): the processor implements V1's batch-level interface, and
V2's (`add_request(slot, params)`, `apply(logits, ctx)`) differs. Chunked prefill is off by
default: a half-prefilled partner cannot be told apart inside a V1 processor, so it would only
cost re-runs. The checkpoint's generation config is not applied (generation_config="vllm"), as
the hf backend sets it aside: every method decodes with the command line's settings.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from DecodingMethodsModels.errors import UserError

RETRIES = 4  # decodes of one pair after the first, before giving up with a one-line error


@dataclass(frozen=True)
class EngineSettings:
    """What the engine is built with; none of these changes a token."""

    model: str
    dtype: str = "float32"
    max_model_len: int = 1024
    max_num_seqs: int = 16  # rows, so 8 pairs
    enable_chunked_prefill: bool = False
    max_num_batched_tokens: int | None = None  # None: room for two whole prompts
    enforce_eager: bool = True
    tensor_parallel_size: int = 1
    kv_cache_memory_bytes: int | None = 256 * 2**20
    seed: int = 0
    max_logprobs: int = 20  # beam search asks for K = max(2, 1 + #EOS) * num_beams per beam
    block_size: int | None = None  # tokens per KV-cache block (and prefix-cache unit); None: vLLM's
    async_scheduling: bool = False  # always set: vLLM's default differs by device (README)
    engine_process: bool = False  # the engine core in a process of its own (vLLM's default)


def build_engine(settings: EngineSettings):
    """A V1 LLMEngine with the pairing processor registered."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    from vllm import EngineArgs, LLMEngine

    from DecodingMethodsModels.backends.vllm_pairing import PairedRuleProcessor

    if settings.max_num_seqs % 2:
        raise UserError(f"vLLM's max_num_seqs must be even (pairs of rows), got "
                        f"{settings.max_num_seqs}")
    args = EngineArgs(
        model=settings.model, tokenizer=settings.model, dtype=settings.dtype,
        max_model_len=settings.max_model_len, max_num_seqs=settings.max_num_seqs,
        enable_chunked_prefill=settings.enable_chunked_prefill,
        max_num_batched_tokens=settings.max_num_batched_tokens or max(
            settings.max_model_len * 2, 2048),
        enforce_eager=settings.enforce_eager, generation_config="vllm",
        tensor_parallel_size=settings.tensor_parallel_size,
        kv_cache_memory_bytes=settings.kv_cache_memory_bytes, seed=settings.seed,
        max_logprobs=settings.max_logprobs, block_size=settings.block_size,
        logits_processors=[PairedRuleProcessor], disable_log_stats=True,
        async_scheduling=settings.async_scheduling,
    )
    return LLMEngine.from_engine_args(args, enable_multiprocessing=settings.engine_process)



def add_tokens(engine, request_id: str, prompt: list[int], params, priority: int = 0) -> None:
    """Add a request whose prompt is token ids, in vLLM 0.32's form: the renderer's output
    (a raw {"prompt_token_ids": ...} dict is deprecated)."""
    from vllm.inputs import TokensPrompt

    (engine_input,) = engine.renderer.render_cmpl([TokensPrompt(prompt_token_ids=prompt)])
    engine.add_request(request_id, engine_input, params, priority=priority)


def engine_sentinels(engine, avoid) -> tuple[int, int]:
    """The pairs' two sentinels for `engine`'s model (vllm_pair_spec.choose_sentinels), never
    an id of `avoid` (the runs' stop ids) nor the tokenizer's BOS, EOS, padding or unknown."""
    from DecodingMethodsModels.backends.vllm_pair_spec import choose_sentinels

    tokenizer = engine.get_tokenizer()
    named = {getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "unk")}
    specials = getattr(tokenizer, "all_special_ids", [])
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    specials = {*specials, *(i for i, token in added.items() if getattr(token, "special", False))}
    return choose_sentinels(engine.model_config.get_vocab_size(), len(tokenizer), specials,
                            {*avoid, *(i for i in named if isinstance(i, int))})


@dataclass(frozen=True)
class Job:
    """One question: a single prompt (`base` None) with its SamplingParams, or a pair whose
    two requests carry `PairSpec`s (vllm_pair_spec) in their extra_args (the driver sets each
    attempt's pair key and the sentinels)."""

    prompt: list[int]
    params: object
    base: list[int] | None = None
    base_params: object = None


_ids = itertools.count()  # request ids are unique within the process
_runs = itertools.count()


class Driver:
    """Feeds jobs to an engine: at most `max_num_seqs` rows live, a pair's two requests always
    added together between steps, finished questions yielded as (job number, token ids).

    A pair is kept only when `pair_verdict` accepts its two answers. A broken one (a row ended
    on the out-of-step sentinel, or the answers differ) is decoded again as soon as it is
    found (its partner aborted, the new attempt first in line); from its second re-run on it
    runs alone in the engine (`_admits`), so that what broke it before cannot recur; after
    `retries` re-runs, a one-line error. `reran`: (job, reason) of each re-run of the
    last `run`; `reruns`: re-runs over the driver's life."""

    def __init__(self, engine, max_num_seqs: int, retries: int = RETRIES):
        self.engine = engine
        self.max_rows = max_num_seqs
        self.retries = retries
        self.reruns = 0
        self.reran: list[tuple[int, str]] = []
        self._sentinels: dict[frozenset, tuple[int, int]] = {}

    def sentinels(self, jobs: list[Job]) -> tuple[int, int]:
        stops = frozenset(i for job in jobs if job.base is not None
                          for params in (job.params, job.base_params)
                          for i in params.stop_token_ids or [])
        if stops not in self._sentinels:
            self._sentinels[stops] = engine_sentinels(self.engine, stops)
        return self._sentinels[stops]

    def run(self, jobs: list[Job]) -> Iterator[tuple[int, list[int]]]:
        run_number = next(_runs)
        sentinels = self.sentinels(jobs) if any(j.base is not None for j in jobs) else None
        self.reran = []
        waiting = deque((k, 0) for k in range(len(jobs)))
        live: dict[str, tuple[int, int, str]] = {}  # request id -> (job, attempt, role)
        halves: dict[int, dict[str, list[int]]] = {}  # job -> finished answers by role
        try:
            while waiting or live:
                while waiting and self._admits(len(live), jobs[waiting[0][0]], waiting[0][1]):
                    k, attempt = waiting.popleft()
                    self._add(jobs[k], pair_key(run_number, k, attempt), k, attempt, live,
                              sentinels)
                for out in self.engine.step():
                    if not out.finished or out.request_id not in live:
                        continue
                    k, attempt, role = live.pop(out.request_id)
                    ids = list(out.outputs[0].token_ids)
                    if jobs[k].base is None:
                        yield k, ids
                        continue
                    done = halves.setdefault(k, {})
                    done[role] = ids
                    if len(done) < 2 and not set(ids) & set(sentinels):
                        continue  # the partner is still decoding
                    self._drop_partner(k, live)  # a row on a sentinel dooms its partner
                    del halves[k]
                    kept = self._verdict(k, attempt, done, sentinels)
                    if kept is None:
                        waiting.appendleft((k, attempt + 1))
                    else:
                        yield k, kept
        finally:  # an error or an abandoned stream leaves nothing running in the engine
            if live:
                self.engine.abort_request(list(live))

    def _drop_partner(self, k: int, live: dict) -> None:
        partner = [rid for rid, (job, _, _) in live.items() if job == k]
        if partner:
            self.engine.abort_request(partner)
            for rid in partner:
                del live[rid]

    def _verdict(self, k: int, attempt: int, done: dict, sentinels) -> list[int] | None:
        """A finished pair's tokens, or None to decode it again; raises when it cannot be."""
        from DecodingMethodsModels.backends.vllm_pair_spec import (
            ACCEPTED,
            UNUSABLE,
            pair_verdict,
        )

        verdict = pair_verdict(done.get("pref", []), done.get("base", []), *sentinels)
        if verdict == ACCEPTED:
            return done["pref"]
        if verdict == UNUSABLE:
            raise NonFinitePair(k)
        self.reruns += 1
        self.reran.append((k, verdict))
        if attempt >= self.retries:
            raise UserError(
                f"vLLM could not keep question {k}'s two requests in step in {attempt + 1} "
                "tries: lower --vllm_max_num_seqs or raise --vllm_kv_cache_gb (preemption), "
                "and keep chunked prefill off")
        return None

    def _admits(self, rows: int, job: Job, attempt: int) -> bool:
        """Room for the job's rows. A pair's first re-run starts as soon as two rows are free
        (a late partner, a preemption in passing); from its second on, and on its last try, it
        runs alone (the whole token budget and KV cache for it): what broke it twice is the
        engine's load (measured under a small KV cache, tensor parallel 2 on CPU: re-runs
        among other pairs mostly broke again, as vLLM preempts the latest arrivals first)."""
        if attempt >= min(2, self.retries) and attempt > 0:
            return rows == 0
        return rows + (1 if job.base is None else 2) <= self.max_rows

    def _add(self, job: Job, key: str, k: int, attempt: int, live: dict, sentinels) -> None:
        run = next(_ids)
        if job.base is None:
            rid = f"q{k}-{run}"
            add_tokens(self.engine, rid, job.prompt, job.params)
            live[rid] = (k, attempt, "single")
            return
        for role, prompt, params in (("pref", job.prompt, job.params),
                                     ("base", job.base, job.base_params)):
            rid = f"{key}-{role}-{run}"
            add_tokens(self.engine, rid, prompt, paired(params, key, sentinels))
            live[rid] = (k, attempt, role)


class NonFinitePair(RuntimeError):
    def __init__(self, job: int):
        super().__init__(f"NaN or no finite score for question {job}")
        self.job = job


def pair_key(run_number: int, job: int, attempt: int) -> str:
    return f"r{run_number}-q{job}-a{attempt}"


def paired(params, key: str, sentinels: tuple[int, int]):
    """A copy of paired SamplingParams whose spec names `key` (one key per attempt, so a
    re-run's rows are never mistaken for an earlier attempt's) and the engine's sentinels,
    which are also stop ids."""
    from DecodingMethodsModels.backends.vllm_pair_spec import KEY

    sentinel, unusable = sentinels
    spec = dict(params.extra_args[KEY], pair=key, sentinel=sentinel, unusable=unusable)
    copy = params.clone()
    copy.extra_args = {**params.extra_args, KEY: spec}
    copy.stop_token_ids = [*(params.stop_token_ids or []), sentinel, unusable]
    copy.all_stop_token_ids.update((sentinel, unusable))
    return copy
