"""`--method beam` on vLLM: transformers' beam search (rules/beam_search.py) over log-probs that
vLLM computes, so the answers are the hf backend's `generate(num_beams=n)`.

vLLM's own `LLM.beam_search` is another algorithm: it divides a hypothesis's score by the
prompt's length plus the answer's, finishes every EOS candidate of every beam, counts one EOS
id only and never stops early, so its answers are not the hf backend's. This driver keeps
transformers' rules and asks vLLM only for each running beam's best K next-token log-probs:
one request per running beam and step (its prompt is the question's prompt plus the beam's
tokens, one new token, `logprobs=K`), which vLLM's prefix cache serves from the tokens the
beam shares with earlier requests, as vLLM's own beam search does. Log-probs are vLLM's raw
ones (fp32 log-softmax of the logits); the requests are greedy and carry no pair spec, so the
pairing processor leaves them alone.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator

from DecodingMethodsModels.rules.beam_search import BeamSearch, candidates_per_beam

_ids = itertools.count()


class BeamDriver:
    """Runs questions' beam searches on an engine: as many questions at once as keep their
    running beams within `max_num_seqs` rows (at least one), each finished question yielded as
    (position, generated ids) as soon as its search ends."""

    def __init__(self, engine, max_num_seqs: int):
        self.engine = engine
        self.max_rows = max_num_seqs

    def run(self, prompts: list[list[int]], num_beams: int, eos_ids: list[int],
            max_new_tokens: int, vocab_size: int) -> Iterator[tuple[int, list[int]]]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True,
                                logprobs=candidates_per_beam(num_beams, eos_ids),
                                detokenize=False)
        waiting = deque(range(len(prompts)))
        live: dict[int, BeamSearch] = {}
        while waiting or live:
            while waiting and (not live or (len(live) + 1) * num_beams <= self.max_rows):
                live[waiting.popleft()] = BeamSearch(num_beams, list(eos_ids), max_new_tokens,
                                                     vocab_size)
            tops = self._one_step(prompts, live, params)
            for k in list(live):
                search = live[k]
                search.advance(tops[k])
                if search.done:
                    del live[k]
                    yield k, search.answer()

    def _one_step(self, prompts, live: dict[int, BeamSearch],
                  params) -> dict[int, list[dict[int, float]]]:
        """Each live question's running beams' top log-probs, from one request per beam."""
        from DecodingMethodsModels.backends.vllm_driver import add_tokens

        pending: dict[str, tuple[int, int]] = {}
        tops = {k: [None] * len(search.running) for k, search in live.items()}
        try:
            for k, search in live.items():
                for b, beam in enumerate(search.running):
                    rid = f"beam{next(_ids)}"
                    add_tokens(self.engine, rid, prompts[k] + beam.tokens, params)
                    pending[rid] = (k, b)
            while pending:
                for out in self.engine.step():
                    if out.finished and out.request_id in pending:
                        k, b = pending.pop(out.request_id)
                        logprobs = out.outputs[0].logprobs[0]
                        tops[k][b] = {token: lp.logprob for token, lp in logprobs.items()}
        finally:  # an error leaves nothing running in the engine
            if pending:
                self.engine.abort_request(list(pending))
        return tops
