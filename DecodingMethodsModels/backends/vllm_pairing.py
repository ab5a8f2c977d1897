"""Two-prompt decoding inside vLLM: a V1 batch-level logits processor that pairs each
question's two requests (preference and base prompt) and forces one token into both rows.

vLLM keeps the processor's view of its persistent batch through `update_state` (rows removed,
added with their SamplingParams, moved) and hands it the whole batch's fp32 logits once per
step in `apply`. A request takes part through `SamplingParams.extra_args["dmm"]` (a `PairSpec`
as a dict): its pair key, its role, the rule and its settings. Each step, for every pair whose
two rows are both in the batch with equal output lengths, the processor computes the project's
pure rule (combine.la_rule / amulet_rule, reward_guided.pad_scores) on the two rows, chooses the
token (argmax, or one draw from a generator seeded by the question's seed and the step, so a
draw does not depend on which questions share the batch) and forces it into both rows: every
other logit -inf. The requests are greedy (temperature 0), so vLLM takes that token.

A row whose partner is absent or at another length (chunked prefill, preemption, an arrival
between steps) cannot be combined honestly: it is forced to the pair's sentinel token, which is
one of its stop ids, so it ends at once, and its key is recorded in `OUT_OF_STEP`. The driver
(vllm_driver.py) accepts a pair only when both rows hold equal tokens and its key is not
recorded, and decodes the rest again. A NaN or all -inf row is recorded in `NONFINITE`.

The records are module state: they reach the driver only when the engine core runs in the
driver's process (VLLM_ENABLE_V1_MULTIPROCESSING=0), which the driver sets.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch
from vllm.v1.sample.logits_processor import (
    BatchUpdate,
    LogitsProcessor,
    MoveDirectionality,
)

from ..combine import amulet_rule, la_rule
from ..reward_guided import choose_candidates, pad_scores
from ..sampling import SamplingSettings, choose_tokens, unusable_rows

KEY = "dmm"  # the extra_args entry that marks a paired request
RULES = ("la", "amulet", "pad")

OUT_OF_STEP: set[str] = set()  # pair keys given the sentinel at least once
NONFINITE: set[str] = set()  # pair keys whose scores held NaN or nothing finite


@dataclass(frozen=True)
class PairSpec:
    """One request of a pair. `role` "pref" or "base". `rule`: "la" (params: ratio), "amulet"
    (iterations, alpha, player_lambda, eta, solver) or "pad" (implicit PAD: weight, topk; z
    from the base row, u from the preference row). `sampling`: None for argmax, else
    SamplingSettings' fields (la, amulet) or {"temperature": t} (pad's "topk" mode)."""

    pair: str
    role: str
    rule: str
    params: dict
    sentinel: int
    seed: int = 0
    sampling: dict | None = None

    def as_extra_args(self) -> dict:
        return {KEY: asdict(self)}


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one question's draw at one step: the same whatever the batch."""
    digest = hashlib.sha256(f"{seed}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") % (2**63))


def _rule_of(spec: PairSpec):
    p = spec.params
    if spec.rule == "la":
        return la_rule(p["ratio"])
    return amulet_rule(p["iterations"], p["alpha"], p["player_lambda"], p["eta"], p["solver"])


def choose_pair_token(spec: PairSpec, pref_logits: torch.Tensor, base_logits: torch.Tensor,
                      step: int) -> int | None:
    """The token of one pair at one step from its two rows' raw logits (V,), or None when
    the scores are unusable."""
    generator = None if spec.sampling is None else step_generator(spec.seed, step)
    if spec.rule == "pad":
        z, u = base_logits.float().unsqueeze(0), pref_logits.float().unsqueeze(0)
        candidate_logits, candidates = torch.topk(z, spec.params["topk"], dim=-1)
        scores = pad_scores(candidate_logits, u.gather(1, candidates), spec.params["weight"])
        if bool(unusable_rows(scores).any()):
            return None
        mode = "greedy" if spec.sampling is None else "topk"
        temp = 1.0 if spec.sampling is None else spec.sampling["temperature"]
        choice = choose_candidates(scores, mode, temp, generator)
        return int(candidates[0, int(choice[0])])
    pref = torch.log_softmax(pref_logits.float().unsqueeze(0), dim=-1)
    base = torch.log_softmax(base_logits.float().unsqueeze(0), dim=-1)
    scores = _rule_of(spec)(pref, base)
    if bool(unusable_rows(scores).any()):
        return None
    settings = SamplingSettings() if spec.sampling is None else SamplingSettings(
        do_sample=True, **spec.sampling)
    return int(choose_tokens(scores, settings, generator)[0])


class PairedRuleProcessor(LogitsProcessor):
    """The V1 processor described in the module docstring; register it with
    `LLM(..., logits_processors=[PairedRuleProcessor])` or `--logits-processors
    DecodingMethodsModels.backends.vllm_pairing:PairedRuleProcessor`."""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        spec = (sampling_params.extra_args or {}).get(KEY)
        if spec is None:
            return
        try:
            spec = PairSpec(**spec)
        except TypeError as err:
            raise ValueError(f"extra_args[{KEY!r}] is not a pair spec: {err}") from None
        if spec.role not in ("pref", "base") or spec.rule not in RULES:
            raise ValueError(f"pair spec: role must be pref or base and rule one of {RULES}")
        if spec.sentinel not in (sampling_params.stop_token_ids or []):
            raise ValueError("pair spec: the sentinel token must be one of stop_token_ids")
        if sampling_params.temperature != 0:
            raise ValueError("paired requests must be greedy (temperature 0): the processor "
                             "draws the token itself")

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        # batch row -> (spec, the request's running output ids)
        self.rows: dict[int, tuple[PairSpec, list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, _prompt, output in batch_update.added:
            spec = (params.extra_args or {}).get(KEY) if params is not None else None
            if spec is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = (PairSpec(**spec), output)
        for a, b, direction in batch_update.moved:
            first, second = self.rows.pop(a, None), self.rows.pop(b, None)
            if first is not None:
                self.rows[b] = first
            if direction == MoveDirectionality.SWAP and second is not None:
                self.rows[a] = second

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        pairs: dict[str, dict[str, int]] = {}
        for index, (spec, _output) in self.rows.items():
            if index < logits.shape[0]:
                pairs.setdefault(spec.pair, {})[spec.role] = index
        for key, roles in pairs.items():
            token = self._pair_token(key, roles, logits)
            for index in roles.values():
                spec = self.rows[index][0]
                forced = spec.sentinel if token is None else token
                logits[index].fill_(float("-inf"))
                logits[index, forced] = 0.0
        return logits

    def _pair_token(self, key: str, roles: dict[str, int], logits: torch.Tensor) -> int | None:
        """The pair's token this step, or None (recorded) when it cannot be combined."""
        if len(roles) != 2:
            OUT_OF_STEP.add(key)
            return None
        (spec, pref_out), (_, base_out) = self.rows[roles["pref"]], self.rows[roles["base"]]
        if len(pref_out) != len(base_out):
            OUT_OF_STEP.add(key)
            return None
        token = choose_pair_token(spec, logits[roles["pref"]], logits[roles["base"]],
                                  len(pref_out))
        if token is None:
            NONFINITE.add(key)
        return token
