"""Two-prompt decoding inside vLLM: a V1 batch-level logits processor that pairs each
question's two requests (preference and base prompt) and forces one token into both rows.

vLLM keeps the processor's view of its persistent batch through `update_state` (rows removed,
added with their SamplingParams, moved) and hands it the whole batch's fp32 logits once per
step in `apply`. A request takes part through `SamplingParams.extra_args["dmm"]` (a `PairSpec`
of vllm_pair_spec.py, as a dict or as its JSON string): its pair key, its role, the rule and
its settings, and its two sentinels. Each step, for every pair whose two rows are both in the
batch with equal output lengths, the processor computes the project's pure rule
(combine.la_rule / amulet_rule, reward_guided.pad_scores) on the two rows, with the sentinels
masked out, chooses the token (argmax, or one draw from a uniform number derived from the
question's seed and the step, so a draw does not depend on which questions share the batch)
and forces it into both rows: every other logit -inf. The requests are greedy (temperature 0),
so vLLM takes that token.

A row that cannot be served is forced to a sentinel and ends on it (vllm_pair_spec.py says
which); nothing is recorded here. The driver and the server client judge a pair by what the
engine returns (`vllm_pair_spec.pair_verdict`), so the rule holds whichever process runs this
processor: the driver's, an engine core's, each tensor-parallel worker's, a server's.
`apply` never raises: a rule that fails on a group gives its rows the `unusable` sentinel and
a warning in the engine's log.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace

import torch
from vllm.v1.sample.logits_processor import (
    BatchUpdate,
    LogitsProcessor,
    MoveDirectionality,
)

from DecodingMethodsModels.backends.vllm_pair_spec import (
    KEY,
    PARAMS,
    RULES,
    SAMPLING,
    KeyLedger,
    PairSpec,
    check_spec,
    spec_of,
)
from DecodingMethodsModels.rules.combine import amulet_rule, la_rule
from DecodingMethodsModels.rules.guided import pad_scores
from DecodingMethodsModels.rules.sampling import SamplingSettings, unusable_rows, warp_scores

__all__ = ["KEY", "PARAMS", "RULES", "SAMPLING", "PairSpec", "PairedRuleProcessor", "spec_of"]

logger = logging.getLogger(__name__)


def step_uniform(seed: int, step: int) -> float:
    """The uniform number in [0, 1) of one question's draw at one step: a hash of the seed and
    the step, the same whatever the batch, the device or the process."""
    digest = hashlib.sha256(f"{seed}:{step}".encode()).digest()
    return int.from_bytes(digest[:7], "little") / 2.0**56


def draw(scores: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One draw per row from softmax(scores) by inversion: the first index whose cumulative
    probability exceeds `u * total`. (n, V) scores and (n,) uniforms in [0, 1) -> (n,) ids,
    on the scores' device; a zero-probability entry is never drawn."""
    cdf = torch.softmax(scores, dim=-1).double().cumsum(dim=-1)  # (n, V)
    target = (uniforms.double() * cdf[:, -1]).unsqueeze(-1)  # (n, 1)
    chosen = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return chosen.clamp(max=scores.shape[-1] - 1)


def _rule_of(spec: PairSpec):
    p = spec.params
    if spec.rule == "la":
        return la_rule(p["ratio"])
    return amulet_rule(p["iterations"], p["alpha"], p["player_lambda"], p["eta"], p["solver"])


def _masked(scores: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    """`scores` (n, V) with each row's banned ids (n, m) set to -inf: the sentinels are never
    chosen."""
    return scores.scatter(1, banned, float("-inf"))


def choose_pair_tokens(spec: PairSpec, pref_logits: torch.Tensor, base_logits: torch.Tensor,
                       banned: torch.Tensor, uniforms: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (n,), unusable (n,) bool) of n pairs of one rule and settings at one step, from
    their rows' raw logits (n, V) each; `banned` (n, m) ids no pair may choose (its
    sentinels). `uniforms` (n,) draw each pair's token when sampling (vectorised over the
    rows: one warp and one inversion for the group). Everything stays on the logits'
    device."""
    sampling = spec.sampling
    if spec.rule == "pad":  # z from the base rows, u from the preference rows
        z, u = base_logits.float(), pref_logits.float()
        candidate_logits, candidates = torch.topk(_masked(z, banned), spec.params["topk"], dim=-1)
        scores = pad_scores(candidate_logits, u.gather(1, candidates), spec.params["weight"])
        bad = unusable_rows(scores)  # (n,), as the hf backend judges PAD's k candidates
        settings = None if sampling is None else SamplingSettings(
            do_sample=True, temperature=sampling["temperature"])
    else:
        pref = torch.log_softmax(pref_logits.float(), dim=-1)
        base = torch.log_softmax(base_logits.float(), dim=-1)
        scores, candidates = _rule_of(spec)(pref, base), None  # (n, V)
        bad = unusable_rows(scores)
        scores = _masked(scores, banned)
        settings = None if sampling is None else SamplingSettings(do_sample=True, **sampling)
    bad = bad | unusable_rows(scores)
    if settings is None:
        choice = scores.argmax(dim=-1)
    else:
        usable = scores.masked_fill(bad.unsqueeze(-1), 0.0)  # no NaN reaches the draw
        choice = draw(warp_scores(usable, settings), uniforms)
    if candidates is not None:
        choice = candidates.gather(1, choice.unsqueeze(-1)).squeeze(-1)
    return choice, bad


def _group(spec: PairSpec) -> str:
    """Pairs that one call of the rule can serve together: same rule, settings, sampling."""
    return json.dumps([spec.rule, spec.params, spec.sampling], sort_keys=True)


class PairedRuleProcessor(LogitsProcessor):
    """The V1 processor described in the module docstring; register it with
    `LLM(..., logits_processors=[PairedRuleProcessor])` or `--logits-processors
    DecodingMethodsModels.backends.vllm_pairing:PairedRuleProcessor`."""

    keys = KeyLedger()  # in the process that admits requests (the driver's, the server's)

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        """Every field of a paired request (vllm_pair_spec.check_spec) and a pair key and role
        not used before, before the request reaches the engine: a request refused here is
        the server's one-line 400, and nothing wrong reaches `apply`."""
        spec = spec_of(sampling_params.extra_args)
        if spec is None:
            return
        check_spec(spec, sampling_params.stop_token_ids, sampling_params.temperature)
        cls.keys.admit(spec)

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
            spec = spec_of(params.extra_args) if params is not None else None
            if spec is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = (spec, output)
        for a, b, direction in batch_update.moved:
            first, second = self.rows.pop(a, None), self.rows.pop(b, None)
            if first is not None:
                self.rows[b] = first
            if direction == MoveDirectionality.SWAP and second is not None:
                self.rows[a] = second

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        pairs: dict[str, list[tuple[str, int]]] = {}
        for index, (spec, _output) in self.rows.items():
            if index < logits.shape[0]:
                pairs.setdefault(spec.pair, []).append((spec.role, index))
        if not pairs:
            return logits
        tokens = self._pair_tokens(pairs, logits)  # all read before any row is forced
        rows, forced = [], []
        for key, members in pairs.items():
            for _role, index in members:  # a sentinel is the row's own
                token = tokens[key]
                rows.append(index)
                forced.append(getattr(self.rows[index][0], token) if isinstance(token, str)
                              else token)
        index = torch.tensor(rows, device=logits.device)
        logits[index] = float("-inf")
        logits[index, torch.tensor(forced, device=logits.device)] = 0.0
        return logits

    def _pair_tokens(self, pairs: dict[str, list[tuple[str, int]]],
                     logits: torch.Tensor) -> dict[str, int | str]:
        """Each pair's token this step: the rule's, or "sentinel" / "unusable" (each row is
        then forced to its own spec's)."""
        tokens: dict[str, int | str] = {}
        ready: dict[str, list[tuple[str, int, int, PairSpec, int]]] = {}
        for key, members in pairs.items():
            roles = dict(members)
            if not self._in_step(members, roles):
                tokens[key] = "sentinel"
                continue
            spec = self.rows[roles["pref"]][0]
            step = len(self.rows[roles["pref"]][1])
            ready.setdefault(_group(spec), []).append(
                (key, roles["pref"], roles["base"], spec, step))
        for group in ready.values():
            try:
                chosen = self._group_tokens(group, logits)
            except Exception:  # noqa: BLE001 - a failing rule must not stop the engine
                logger.exception("pairing: rule %s failed; its pairs end on the unusable "
                                 "sentinel", group[0][3].rule)
                chosen = ["unusable"] * len(group)
            for (key, *_), token in zip(group, chosen, strict=True):
                tokens[key] = token
        return tokens

    def _in_step(self, members: list[tuple[str, int]], roles: dict[str, int]) -> bool:
        """One pref and one base row, with the same spec but the role, at equal lengths (not:
        a partner absent or behind, a role twice, two requests that disagree on the rule)."""
        if len(members) != 2 or roles.keys() != {"pref", "base"}:
            return False
        (pref, pref_out), (base, base_out) = self.rows[roles["pref"]], self.rows[roles["base"]]
        return replace(pref, role="") == replace(base, role="") and len(pref_out) == len(base_out)

    @staticmethod
    def _group_tokens(group, logits: torch.Tensor) -> list[int | str]:
        choice, bad = group_choice(group, logits)
        return ["unusable" if b else int(t) for b, t in zip(bad.tolist(), choice.tolist(),
                                                            strict=True)]


def group_choice(group, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """choose_pair_tokens for one group of pairs `(key, pref row, base row, spec, step)`, every
    tensor it makes (row indices, sentinels, uniforms) on the logits' device."""
    device = logits.device
    specs = [spec for _, _, _, spec, _ in group]
    pref = logits[torch.tensor([p for _, p, _, _, _ in group], device=device)]
    base = logits[torch.tensor([b for _, _, b, _, _ in group], device=device)]
    banned = torch.tensor([[s.sentinel, s.unusable] for s in specs], device=device)
    uniforms = None
    if specs[0].sampling is not None:
        uniforms = torch.tensor([step_uniform(spec.seed, step) for *_, spec, step in group],
                                dtype=torch.float64, device=device)
    return choose_pair_tokens(specs[0], pref, base, banned, uniforms)
