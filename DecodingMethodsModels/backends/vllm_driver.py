"""An in-process vLLM engine and the driver that feeds it: single requests (base, pref) and
whole pairs (la, amulet, implicit PAD) admitted between engine steps, out-of-step pairs
detected and decoded again.

The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so that the pairing
processor's records (vllm_pairing.OUT_OF_STEP) are visible here, and on vLLM's V1 model runner
(VLLM_USE_V2_MODEL_RUNNER=0): the processor implements V1's batch-level interface, and V2's
(`add_request(slot, params)`, `apply(logits, ctx)`) differs. Chunked prefill is off by default:
a half-prefilled partner cannot be told apart inside a V1 processor, so it would only cost
re-runs. The checkpoint's generation config is not applied (generation_config="vllm"), as
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


def build_engine(settings: EngineSettings):
    """A V1 LLMEngine in this process with the pairing processor registered."""
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
    return LLMEngine.from_engine_args(args)


@dataclass(frozen=True)
class Job:
    """One question: a single prompt (`base` None) with its SamplingParams, or a pair whose
    two requests carry `PairSpec`s (vllm_pairing) in their extra_args."""

    prompt: list[int]
    params: object
    base: list[int] | None = None
    base_params: object = None


_ids = itertools.count()  # request ids are unique within the process
_runs = itertools.count()


class Driver:
    """Feeds jobs to an engine: at most `max_num_seqs` rows live, a pair's two requests always
    added together between steps, finished questions yielded as (job number, token ids)."""

    def __init__(self, engine, max_num_seqs: int, retries: int = RETRIES):
        self.engine = engine
        self.max_rows = max_num_seqs
        self.retries = retries
        self.reruns = 0  # pairs decoded again because they fell out of step

    def run(self, jobs: list[Job]) -> Iterator[tuple[int, list[int]]]:
        run_number = next(_runs)
        waiting = deque((k, 0) for k in range(len(jobs)))
        live: dict[str, tuple[int, int, str]] = {}  # request id -> (job, attempt, role)
        halves: dict[int, dict[str, object]] = {}  # job -> finished outputs by role
        try:
            while waiting or live:
                while waiting and self._admits(len(live), jobs[waiting[0][0]], waiting[0][1]):
                    k, attempt = waiting.popleft()
                    self._add(jobs[k], pair_key(run_number, k, attempt), k, attempt, live)
                for out in self.engine.step():
                    if not out.finished or out.request_id not in live:
                        continue
                    k, attempt, role = live.pop(out.request_id)
                    if jobs[k].base is None:
                        yield k, list(out.outputs[0].token_ids)
                        continue
                    done = halves.setdefault(k, {})
                    done[role] = out.outputs[0]
                    if len(done) < 2:
                        continue
                    del halves[k]
                    ids = self._accepted(pair_key(run_number, k, attempt), k, attempt, done)
                    if ids is None:
                        self.reruns += 1
                        waiting.appendleft((k, attempt + 1))
                    else:
                        yield k, ids
        finally:  # an error or an abandoned stream leaves nothing running in the engine
            if live:
                self.engine.abort_request(list(live))

    def _accepted(self, key: str, k: int, attempt: int, done: dict) -> list[int] | None:
        """A finished pair's tokens, or None to decode it again; raises when it cannot be."""
        from DecodingMethodsModels.backends.vllm_pairing import NONFINITE, OUT_OF_STEP

        broken = key in OUT_OF_STEP
        OUT_OF_STEP.discard(key)
        if key in NONFINITE:
            NONFINITE.discard(key)
            raise NonFinitePair(k)
        pref, base = list(done["pref"].token_ids), list(done["base"].token_ids)
        if not broken and pref == base:
            return pref
        if attempt >= self.retries:
            raise UserError(
                f"vLLM could not keep question {k}'s two requests in step in {attempt + 1} "
                "tries: lower --vllm_max_num_seqs or raise --vllm_kv_cache_gb (preemption), "
                "and keep chunked prefill off")
        return None

    def _admits(self, rows: int, job: Job, attempt: int) -> bool:
        """Room for the job's rows; a pair decoded again runs alone (the whole token budget
        and KV cache for it), so what broke it before cannot recur."""
        if attempt > 0:
            return rows == 0
        return rows + (1 if job.base is None else 2) <= self.max_rows

    def _add(self, job: Job, key: str, k: int, attempt: int, live: dict) -> None:
        run = next(_ids)
        if job.base is None:
            rid = f"q{k}-{run}"
            self.engine.add_request(rid, {"prompt_token_ids": job.prompt}, job.params)
            live[rid] = (k, attempt, "single")
            return
        for role, prompt, params in (("pref", job.prompt, job.params),
                                     ("base", job.base, job.base_params)):
            rid = f"{key}-{role}-{run}"
            self.engine.add_request(rid, {"prompt_token_ids": prompt},
                                    with_pair_key(params, key))
            live[rid] = (k, attempt, role)


class NonFinitePair(RuntimeError):
    def __init__(self, job: int):
        super().__init__(f"NaN or no finite score for question {job}")
        self.job = job


def pair_key(run_number: int, job: int, attempt: int) -> str:
    return f"r{run_number}-q{job}-a{attempt}"


def with_pair_key(params, key: str):
    """A copy of paired SamplingParams whose spec names `key` (one key per attempt, so a
    re-run's rows are never mistaken for an earlier attempt's)."""
    from DecodingMethodsModels.backends.vllm_pairing import KEY

    spec = dict(params.extra_args[KEY], pair=key)
    copy = params.clone()
    copy.extra_args = {**params.extra_args, KEY: spec}
    return copy

