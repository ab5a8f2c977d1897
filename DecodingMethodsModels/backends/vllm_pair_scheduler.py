"""A vLLM scheduler for the OpenAI-compatible server that starts a pair's two requests in the
same step: `--scheduler-cls DecodingMethodsModels.backends.vllm_pair_scheduler.PairScheduler`.

Behind the server, a pair's two requests reach the engine one after the other. An idle engine
steps as soon as the first arrives, so that request is prefilled alone and the pairing
processor (vllm_pairing.py) must end it on the sentinel: on CPU, without this scheduler, about
four pairs in five sent one at a time broke so, and a busy 2-core machine could break one pair
five times running. This scheduler keeps a new paired request waiting until its partner has
come too (at most HOLD_S: a partner that never comes lets it go, and it ends on the sentinel),
and keeps both waiting while fewer than two rows are free. It only chooses when a pair starts;
the processor still checks every step, so a pair broken otherwise (preemption, a token budget
that holds one prompt of the two) is still caught.
"""

from __future__ import annotations

import os
import time
from collections import Counter

from vllm.v1.core.sched.scheduler import Scheduler

from DecodingMethodsModels.backends.vllm_pair_spec import spec_of

# longest wait for a partner, in seconds (the environment variable, read by the server's engine)
HOLD_S = float(os.environ.get("DMM_PAIR_HOLD_S", "10"))
IDLE_S = 0.002  # pause of an engine with nothing to run but requests whose partner is late


class PairScheduler(Scheduler):
    def __init__(self, *args, **kwargs) -> None:
        from DecodingMethodsModels.backends.vllm_engine import check_version

        check_version()  # written for vLLM 0.32's Scheduler: refuse another series at start-up
        super().__init__(*args, **kwargs)
        self._seen: dict[str, tuple[str | None, float]] = {}  # request id -> (pair, first seen)

    def schedule(self, *args, **kwargs):
        held = self._held()
        if held:
            self.waiting.remove_requests(held)
            if not self.waiting and not self.running:
                time.sleep(IDLE_S)  # else the engine spins on empty steps, starving the server
        try:
            return super().schedule(*args, **kwargs)
        finally:
            if held:  # back at the front, in their order
                self.waiting.prepend_requests(reversed(held))

    def _pair_of(self, request) -> str | None:
        if request.request_id not in self._seen:
            spec = spec_of(getattr(request.sampling_params, "extra_args", None))
            self._seen[request.request_id] = (spec and spec.pair, time.monotonic())
        return self._seen[request.request_id][0]

    def _held(self) -> list:
        """The new paired requests (nothing computed or written yet) to keep waiting this
        step, in queue order: those whose partner has not arrived (for up to HOLD_S), and
        both requests of a new pair when fewer than two rows are free for it."""
        if len(self._seen) > 2 * len(self.requests) + 64:  # forget finished requests
            self._seen = {k: v for k, v in self._seen.items() if k in self.requests}
        waiting = Counter(self._pair_of(r) for r in self.waiting)
        running = {self._pair_of(r) for r in self.running}
        now, rows = time.monotonic(), self.max_num_active_reqs - len(self.running)
        held, admitted = set(), set()
        for r in self.waiting:
            pair = self._pair_of(r)
            if pair is None or pair in running or r.num_computed_tokens or r.output_token_ids:
                rows -= 1  # not paired, resumed, or its pair already broken
            elif waiting[pair] == 1:
                if now - self._seen[r.request_id][1] < HOLD_S:
                    held.add(pair)
                else:
                    rows -= 1  # the partner never came: let it go (it ends on the sentinel)
            elif pair not in admitted and pair not in held:
                if rows >= 2:
                    admitted.add(pair)
                    rows -= 2
                else:
                    held.add(pair)
        return [r for r in self.waiting if self._pair_of(r) in held]
