"""Two-prompt decoding inside vLLM: a V1 batch-level logits processor that pairs each
question's two requests (preference and base prompt) and forces one token into both rows.

vLLM keeps the processor's view of its persistent batch through `update_state` (rows removed,
added with their SamplingParams, moved) and hands it the whole batch's fp32 logits once per
step in `apply`. A request takes part through `SamplingParams.extra_args["dmm"]` (a `PairSpec`
as a dict, or as its JSON string: the OpenAI server's `vllm_xargs` holds no nested objects):
its pair key, its role, the rule and its settings. Each step, for every pair whose two rows
are both in the batch with equal output lengths, the processor computes the project's
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
driver's process (VLLM_ENABLE_V1_MULTIPROCESSING=0), which the driver sets. Behind the OpenAI
server they stay in the server; its client (library/vllm_server_client.py) reads a broken pair
from the answers instead.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
from vllm.v1.sample.logits_processor import (
    BatchUpdate,
    LogitsProcessor,
    MoveDirectionality,
)

from DecodingMethodsModels.rules.combine import amulet_rule, la_rule
from DecodingMethodsModels.rules.guided import choose_candidates, pad_scores
from DecodingMethodsModels.rules.sampling import SamplingSettings, choose_tokens, unusable_rows

KEY = "dmm"  # the extra_args entry that marks a paired request
RULES = ("la", "amulet", "pad")
PARAMS = {"la": {"ratio"}, "amulet": {"iterations", "alpha", "player_lambda", "eta", "solver"},
          "pad": {"weight", "topk"}}  # what each rule reads from PairSpec.params
SAMPLING = {"la": {"temperature", "top_k", "top_p"}, "amulet": {"temperature", "top_k", "top_p"},
            "pad": {"temperature"}}  # the keys PairSpec.sampling may hold

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

    def as_xargs(self) -> dict:
        """The OpenAI server's `vllm_xargs`: the spec as a JSON string."""
        return {KEY: json.dumps(asdict(self))}


def spec_of(extra_args: dict | None) -> PairSpec | None:
    """The PairSpec of a request's extra_args: `extra_args[KEY]` as a dict (the in-process
    driver) or as its JSON string (the OpenAI server, whose `vllm_xargs` holds no nested
    objects); None for a request that is not paired. ValueError for anything else."""
    spec = (extra_args or {}).get(KEY)
    if spec is None:
        return None
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as err:
            raise ValueError(f"extra_args[{KEY!r}] is not valid JSON: {err}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"extra_args[{KEY!r}] must be a pair spec object (or its JSON "
                         f"string), got {type(spec).__name__}")
    try:
        return PairSpec(**spec)
    except TypeError as err:
        raise ValueError(f"extra_args[{KEY!r}] is not a pair spec: {err}") from None


def _settings_fit(spec: PairSpec) -> bool:
    """The spec's params and sampling are what its rule reads, of the right kinds."""
    params, sampling = spec.params, {} if spec.sampling is None else spec.sampling
    if not (isinstance(params, dict) and isinstance(sampling, dict)):
        return False
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool)
                  for k, v in params.items() if k != "solver")
    return (params.keys() == PARAMS[spec.rule] and numbers
            and isinstance(params.get("solver", ""), str)
            and sampling.keys() <= SAMPLING[spec.rule]
            and all(v is None or isinstance(v, int | float) for v in sampling.values()))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one question's draw at one step: the same whatever the batch."""
    digest = hashlib.sha256(f"{seed}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") % (2**63))


def _rule_of(spec: PairSpec):
    p = spec.params
    if spec.rule == "la":
        return la_rule(p["ratio"])
    return amulet_rule(p["iterations"], p["alpha"], p["player_lambda"], p["eta"], p["solver"])


def choose_pair_tokens(spec: PairSpec, pref_logits: torch.Tensor, base_logits: torch.Tensor,
                       generators: list) -> list[int | None]:
    """The tokens of n pairs of one rule and settings at one step from their rows' raw
    logits (n, V) each; None where the scores are unusable. `generators[i]` draws pair i's
    token when sampling (one per question and step: a draw does not depend on the batch)."""
    if spec.rule == "pad":  # z from the base rows, u from the preference rows
        z, u = base_logits.float(), pref_logits.float()
        candidate_logits, candidates = torch.topk(z, spec.params["topk"], dim=-1)  # (n, k)
        scores = pad_scores(candidate_logits, u.gather(1, candidates), spec.params["weight"])
        temp = 1.0 if spec.sampling is None else spec.sampling["temperature"]
        mode = "greedy" if spec.sampling is None else "topk"
        pick = lambda rows, gen: choose_candidates(rows, mode, temp, gen)  # noqa: E731
    else:
        pref = torch.log_softmax(pref_logits.float(), dim=-1)
        base = torch.log_softmax(base_logits.float(), dim=-1)
        scores, candidates = _rule_of(spec)(pref, base), None  # (n, V)
        settings = SamplingSettings() if spec.sampling is None else SamplingSettings(
            do_sample=True, **spec.sampling)
        pick = lambda rows, gen: choose_tokens(rows, settings, gen)  # noqa: E731
    if spec.sampling is None:
        choice = pick(scores, None)
    else:
        choice = torch.cat([pick(scores[i:i + 1], g) for i, g in enumerate(generators)])
    if candidates is not None:
        choice = candidates.gather(1, choice.unsqueeze(-1)).squeeze(-1)
    bad = unusable_rows(scores).tolist()
    return [None if b else int(t) for b, t in zip(bad, choice.tolist(), strict=True)]


def _group(spec: PairSpec) -> str:
    """Pairs that one call of the rule can serve together: same rule, settings, sampling."""
    return json.dumps([spec.rule, spec.params, spec.sampling], sort_keys=True)


class PairedRuleProcessor(LogitsProcessor):
    """The V1 processor described in the module docstring; register it with
    `LLM(..., logits_processors=[PairedRuleProcessor])` or `--logits-processors
    DecodingMethodsModels.backends.vllm_pairing:PairedRuleProcessor`."""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        spec = spec_of(sampling_params.extra_args)
        if spec is None:
            return
        if spec.role not in ("pref", "base") or spec.rule not in RULES:
            raise ValueError(f"pair spec: role must be pref or base and rule one of {RULES}")
        # checked here, before the request reaches the engine: a KeyError inside `apply`
        # would stop the engine (and a server with it)
        if not _settings_fit(spec):
            raise ValueError(f"pair spec: rule {spec.rule} needs numbers as params "
                             f"{sorted(PARAMS[spec.rule])} (solver a name) and sampling None or "
                             f"numbers among {sorted(SAMPLING[spec.rule])}")
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
        pairs: dict[str, dict[str, int]] = {}
        for index, (spec, _output) in self.rows.items():
            if index < logits.shape[0]:
                pairs.setdefault(spec.pair, {})[spec.role] = index
        tokens = self._pair_tokens(pairs, logits)  # all read before any row is forced
        rows, forced = [], []
        for key, roles in pairs.items():
            for index in roles.values():
                rows.append(index)
                token = tokens.get(key)
                forced.append(self.rows[index][0].sentinel if token is None else token)
        if not rows:
            return logits
        index = torch.tensor(rows, device=logits.device)
        logits[index] = float("-inf")
        logits[index, torch.tensor(forced, device=logits.device)] = 0.0
        return logits

    def _pair_tokens(self, pairs: dict[str, dict[str, int]],
                     logits: torch.Tensor) -> dict[str, int | None]:
        """Each pair's token this step; None (recorded) where it cannot be combined."""
        tokens: dict[str, int | None] = {}
        ready: dict[str, list[tuple[str, dict[str, int], PairSpec, int]]] = {}
        for key, roles in pairs.items():
            if len(roles) != 2 or len(self.rows[roles["pref"]][1]) != len(
                    self.rows[roles["base"]][1]):
                OUT_OF_STEP.add(key)
                tokens[key] = None
                continue
            spec = self.rows[roles["pref"]][0]
            step = len(self.rows[roles["pref"]][1])
            ready.setdefault(_group(spec), []).append((key, roles, spec, step))
        for group in ready.values():
            pref = logits[torch.tensor([roles["pref"] for _, roles, _, _ in group])]
            base = logits[torch.tensor([roles["base"] for _, roles, _, _ in group])]
            generators = [None if spec.sampling is None else step_generator(spec.seed, step)
                          for _, _, spec, step in group]
            chosen = choose_pair_tokens(group[0][2], pref, base, generators)
            for (key, _, _, _), token in zip(group, chosen, strict=True):
                tokens[key] = token
                if token is None:
                    NONFINITE.add(key)
        return tokens
