"""Asking the judge: bounded typed retries, then a cached, concurrent driver over many jobs.

Retry rules (every loop is bounded, nothing waits forever):

- transient API failures (HTTP 408/409/429/5xx, timeouts, connection errors): retried up
  to ``max_retries`` times after ``delay_k = min(max_delay, base_delay * 2**k) * u`` with
  ``u ~ Uniform[0.5, 1]`` (or the server's ``Retry-After`` if longer, capped by
  ``max_delay``); then the run stops with one error line.
- other API errors (400, 401, 403, 404, ...): the run stops at once; retrying cannot help.
- an answer that the protocol's parser rejects (:mod:`evals.judge.judge_protocols`): asked again
  up to ``max_invalid_retries`` times, then recorded (and cached) as ``invalid``. A re-ask is
  not the identical request (a deterministic judge would repeat itself): re-ask k sends the
  judge seed + k and appends the protocol's reminder of the answer form. The cache key stays
  that of the protocol's request.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from evals.errors import EvalFailure
from evals.jsonl_store import JsonlAppender
from evals.judge.judge import INVALID, JudgePreset, judge_label
from evals.judge.judge_protocols import AMULET, JudgeProtocol
from openai_key_info import redact

_RETRYABLE_STATUS = {408, 409, 429}


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of the retry loop; see the module docstring for the delay formula."""

    max_retries: int = 6
    max_invalid_retries: int = 2
    base_delay: float = 1.0
    max_delay: float = 60.0

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        wait_s = min(self.max_delay, self.base_delay * 2**attempt) * rng.uniform(0.5, 1.0)
        if retry_after is not None:
            wait_s = max(wait_s, min(retry_after, self.max_delay))
        return wait_s


@dataclass(frozen=True)
class JudgeJob:
    """One distinct request: its cache key, its messages and a little metadata to log."""

    key: str
    messages: list[dict]
    meta: dict


class JudgeCallError(Exception):
    """The judge could not be asked (fatal error or retries exhausted); message is redacted."""


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


def is_retryable(exc: BaseException) -> bool:
    """Transient: timeouts, connection errors, HTTP 408/409/429 and 5xx."""
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    status = _status(exc)
    return status is not None and (status in _RETRYABLE_STATUS or status >= 500)


def describe_error(exc: BaseException) -> str:
    """One redacted line: exception type, HTTP status if any, first 200 chars of the text."""
    status = _status(exc)
    where = f" (HTTP {status})" if status else ""
    text = " ".join(str(exc).split())[:200]
    return redact(f"{type(exc).__name__}{where}: {text}")


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = getattr(response, "headers", {}).get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _answer_text(completion: Any) -> str:
    choices = getattr(completion, "choices", None) or []
    message = getattr(choices[0], "message", None) if choices else None
    return (getattr(message, "content", None) or "") if message is not None else ""


def ask_until_parsed(
    complete: Callable[[list[dict], int], str], messages: list[dict], max_invalid_retries: int,
    protocol: JudgeProtocol = AMULET,
) -> dict:
    """Ask through ``complete(messages, reask)`` until the answer parses, at most
    ``1 + max_invalid_retries`` times; return ``{"raw", "verdict", "invalid_answers"}`` and,
    after a re-ask, ``"earlier_raw"``: the unparseable answers before the last one.

    Re-ask ``k`` sends the messages followed by the protocol's reminder (and
    ``complete`` gets ``reask=k`` to vary what else it can); after the last unparseable
    answer the verdict is ``invalid``. Shared by the API judge and the local judge.
    """
    invalid_answers, earlier = 0, []
    while True:
        raw = complete(protocol.reask(messages) if invalid_answers else messages,
                       invalid_answers)
        verdict = protocol.parse(raw)
        if verdict is not None or invalid_answers >= max_invalid_retries:
            answer = {
                "raw": raw,
                "verdict": verdict or INVALID,
                "invalid_answers": invalid_answers + (verdict is None),
            }
            return {**answer, "earlier_raw": earlier} if earlier else answer
        earlier.append(raw)
        invalid_answers += 1


def ask_judge(
    client: Any,
    preset: JudgePreset,
    messages: list[dict],
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    protocol: JudgeProtocol = AMULET,
) -> dict:
    """Ask one comparison; return ``{"raw", "verdict", "api_retries", "invalid_answers"}``.

    ``verdict`` is ``text_1``/``text_2``/``tie``, or ``invalid`` after
    ``1 + max_invalid_retries`` unparseable answers; each re-ask differs from the first
    request (see the module docstring). API failures are retried at most ``max_retries``
    times per comparison. Raises :class:`JudgeCallError`.
    """
    import openai

    rng = rng or random.Random()
    api_failures = 0

    def complete(request: list[dict], reask: int) -> str:
        nonlocal api_failures
        while True:
            try:
                completion = client.chat.completions.create(
                    messages=request, **preset.request_kwargs(reask=reask)
                )
            except openai.OpenAIError as exc:
                if not is_retryable(exc):
                    raise JudgeCallError(
                        f"judge request failed: {describe_error(exc)}") from None
                if api_failures >= policy.max_retries:
                    raise JudgeCallError(
                        f"judge request still failing after {api_failures + 1} attempts: "
                        f"{describe_error(exc)}"
                    ) from None
                sleep(policy.delay(api_failures, rng, _retry_after(exc)))
                api_failures += 1
                continue
            return _answer_text(completion)

    answer = ask_until_parsed(complete, messages, policy.max_invalid_retries, protocol)
    return {**answer, "api_retries": api_failures}


def cache_record(job: JudgeJob, preset: JudgePreset, answer: dict) -> dict:
    """The JSONL cache line for one answered job (no credentials, no endpoint)."""
    return {
        "key": job.key,
        "judge_model": preset.model,
        "judge": judge_label(preset),
        "prompt_version": preset.prompt_version,
        **answer,
        "meta": job.meta,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_jobs(
    jobs: list[JudgeJob],
    ask: Callable[[list[dict]], dict],
    preset: JudgePreset,
    appender: JsonlAppender,
    max_concurrency: int = 8,
    progress: bool = True,
) -> dict[str, dict]:
    """Ask every job (``ask(messages)`` gives its answer dict) in a thread pool, appending
    each answer to the cache as it arrives.

    Returns ``{key: cache record}``. On the first :class:`JudgeCallError` no new job is
    started, the in-flight ones finish (and are cached), and :class:`EvalFailure` is raised:
    a rerun resumes from the cache.
    """
    from tqdm import tqdm

    results: dict[str, dict] = {}
    stop = threading.Event()

    def work(job: JudgeJob) -> dict | None:
        if stop.is_set():
            return None
        try:
            answer = ask(job.messages)
        except JudgeCallError:
            stop.set()  # before this thread can pick up another job
            raise
        record = cache_record(job, preset, answer)
        appender.append(record)
        return record

    failure: str | None = None
    bar = tqdm(total=len(jobs), desc="judge", unit="cmp", disable=not progress, file=sys.stderr)
    pool = ThreadPoolExecutor(max_workers=max(1, max_concurrency))
    try:
        pending: set[Future] = {pool.submit(work, job) for job in jobs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    record = future.result()
                except JudgeCallError as exc:
                    if failure is None:
                        failure = str(exc)
                        stop.set()
                    continue
                if record is not None:
                    results[record["key"]] = record
                    bar.update(1)
    finally:  # also on Ctrl-C: start nothing new, drop the queue, let in-flight calls end
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    if failure is not None:
        raise EvalFailure(
            f"{failure}; {len(results)} new judgments were cached, "
            f"{len(jobs) - len(results)} remain: rerun the same command to resume"
        )
    return results
