"""What a paired request says, what the pairing processor accepts, and how a pair's two
answers are judged: the one acceptance rule of two-prompt decoding on vLLM, shared by the
in-process driver (vllm_driver.py) and the server client (library/vllm_server_client.py).
Standard library only: the client needs neither vLLM nor torch.

Each step the pairing processor (vllm_pairing.py) forces one token into both rows of a pair.
A row it cannot serve is forced to one of two sentinels, stop tokens that are no EOS id and
that no rule ever chooses (the processor masks them out of every rule's scores):

- `sentinel`: the row's partner is absent, at another output length, or the pair is not one
  pref and one base row (a partner arriving late, preemption, chunked prefill, a lost request);
- `unusable`: the rule's scores hold a NaN or nothing finite, or the rule could not be applied.

So what the engine returns decides, in every layout (in-process, engine core in another
process, tensor-parallel workers, the server): `pair_verdict` accepts a pair only when both
answers hold the same ids and neither holds a sentinel.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass

KEY = "dmm"  # the extra_args / vllm_xargs entry that marks a paired request
ROLES = ("pref", "base")
RULES = ("la", "amulet", "pad")
SOLVERS = ("closed_form", "iterative")
PARAMS = {"la": {"ratio"}, "amulet": {"iterations", "alpha", "player_lambda", "eta", "solver"},
          "pad": {"weight", "topk"}}  # what each rule reads from PairSpec.params
SAMPLING = {"la": {"temperature", "top_k", "top_p"}, "amulet": {"temperature", "top_k", "top_p"},
            "pad": {"temperature"}}  # the keys PairSpec.sampling may hold
MAX_ITERATIONS = 10_000  # the iterative solver costs O(T V) a step: a server caps T
MAX_TOPK = 4096  # implicit PAD's candidates per step (PAD's configs use 10)
MAX_KEY_CHARS = 200
REMEMBERED_KEYS = 100_000  # (pair, role) keys a process remembers to refuse a reuse

ACCEPTED, OUT_OF_STEP, ANSWERS_DIFFER, UNUSABLE = (
    "accepted", "out_of_step", "answers_differ", "unusable")


@dataclass(frozen=True)
class PairSpec:
    """One request of a pair. `role` "pref" or "base". `rule`: "la" (params: ratio), "amulet"
    (iterations, alpha, player_lambda, eta, solver) or "pad" (implicit PAD: weight, topk; z
    from the base row, u from the preference row). `sentinel` and `unusable`: the two stop
    tokens of the module docstring. `sampling`: None for argmax, else the draw's settings
    (la, amulet: temperature, top_k, top_p; pad's "topk" mode: temperature)."""

    pair: str
    role: str
    rule: str
    params: dict
    sentinel: int
    unusable: int
    seed: int = 0
    sampling: dict | None = None

    def as_extra_args(self) -> dict:
        return {KEY: asdict(self)}

    def as_xargs(self) -> dict:
        """The OpenAI server's `vllm_xargs` (strings, numbers and lists only): a JSON string."""
        return {KEY: json.dumps(asdict(self))}


def spec_of(extra_args: dict | None) -> PairSpec | None:
    """The PairSpec of a request's extra_args: `extra_args[KEY]` as a dict (the in-process
    driver) or as its JSON string (the OpenAI server); None for a request that is not paired.
    ValueError for anything else."""
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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _check_number(name: str, value, low: float, low_open: bool, high: float = math.inf) -> None:
    """A finite number in [low, high] ((low, high] when `low_open`)."""
    if not (_is_number(value) and (value > low if low_open else value >= low)
            and value <= high):
        bound = f"> {low}" if low_open else f">= {low}"
        if high < math.inf:
            bound += f" and <= {high}"
        raise ValueError(f"pair spec: {name} must be a finite number {bound}, got {value!r}")


def _check_int(name: str, value, low: int, high: int) -> None:
    if not (_is_int(value) and low <= value <= high):
        raise ValueError(f"pair spec: {name} must be an integer in [{low}, {high}], "
                         f"got {value!r}")


def _check_params(rule: str, params) -> None:
    if not isinstance(params, dict) or params.keys() != PARAMS[rule]:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"pair spec: rule {rule} needs params {sorted(PARAMS[rule])}, "
                         f"got {got}")
    if rule == "la":
        _check_number("ratio", params["ratio"], 0, False)
    elif rule == "amulet":
        if params["solver"] not in SOLVERS:
            raise ValueError(f"pair spec: unknown Amulet solver {params['solver']!r}; use one "
                             f"of {', '.join(SOLVERS)}")
        _check_int("iterations", params["iterations"], 0, MAX_ITERATIONS)
        _check_number("alpha", params["alpha"], 0, False)
        _check_number("player_lambda", params["player_lambda"], 0, True)
        _check_number("eta", params["eta"], 0, True)
    else:
        _check_number("weight", params["weight"], -math.inf, True)
        _check_int("topk", params["topk"], 1, MAX_TOPK)


def _check_sampling(rule: str, sampling) -> None:
    if sampling is None:
        return
    if not isinstance(sampling, dict) or not sampling.keys() <= SAMPLING[rule]:
        got = sorted(sampling) if isinstance(sampling, dict) else type(sampling).__name__
        raise ValueError(f"pair spec: sampling of rule {rule} is null or holds keys among "
                         f"{sorted(SAMPLING[rule])}, got {got}")
    if "temperature" not in sampling:
        raise ValueError("pair spec: sampling needs a temperature")
    _check_number("temperature", sampling["temperature"], 0, True)
    if sampling.get("top_p") is not None:
        _check_number("top_p", sampling["top_p"], 0, True, 1.0)
    if sampling.get("top_k") is not None:
        _check_int("top_k", sampling["top_k"], 0, 2**31 - 1)


def check_spec(spec: PairSpec, stop_token_ids, temperature: float) -> None:
    """Every field of a paired request, by name and range; ValueError (the server's one-line
    400) for the first one that is wrong. vLLM itself checks that stop ids are within the
    vocabulary, so the sentinels are checked to be stop ids."""
    if not (isinstance(spec.pair, str) and 0 < len(spec.pair) <= MAX_KEY_CHARS):
        raise ValueError(f"pair spec: pair must be a non-empty string of at most "
                         f"{MAX_KEY_CHARS} characters")
    if spec.role not in ROLES or spec.rule not in RULES:
        raise ValueError(f"pair spec: role must be pref or base and rule one of {RULES}, got "
                         f"role {spec.role!r}, rule {spec.rule!r}")
    _check_params(spec.rule, spec.params)
    _check_sampling(spec.rule, spec.sampling)
    _check_int("seed", spec.seed, 0, 2**64 - 1)
    stops = set(stop_token_ids or [])
    for name in ("sentinel", "unusable"):
        if not _is_int(getattr(spec, name)) or getattr(spec, name) not in stops:
            raise ValueError(f"pair spec: the {name} token must be one of stop_token_ids")
    if spec.sentinel == spec.unusable:
        raise ValueError("pair spec: sentinel and unusable must be two different tokens")
    if temperature != 0:
        raise ValueError("paired requests must be greedy (temperature 0): the processor "
                         "draws the token itself")


class KeyLedger:
    """The last `size` (pair, role) keys admitted in this process: a reused one is refused (it
    would replace the first request's row, which would then decode unpaired)."""

    def __init__(self, size: int = REMEMBERED_KEYS):
        self.size, self.seen = size, OrderedDict()

    def admit(self, spec: PairSpec) -> None:
        key = (spec.pair, spec.role)
        if key in self.seen:
            raise ValueError(f"pair spec: pair key {spec.pair!r} with role {spec.role} was "
                             "already used; send every attempt under a new key")
        self.seen[key] = None
        while len(self.seen) > self.size:
            self.seen.popitem(last=False)


def pair_verdict(pref_ids: list[int], base_ids: list[int], sentinel: int, unusable: int) -> str:
    """ACCEPTED when both answers hold the same ids and no sentinel; UNUSABLE when either
    holds the `unusable` sentinel (the rule's scores were not finite: decoding again gives
    the same); OUT_OF_STEP when either holds `sentinel`; ANSWERS_DIFFER otherwise."""
    if unusable in pref_ids or unusable in base_ids:
        return UNUSABLE
    if sentinel in pref_ids or sentinel in base_ids:
        return OUT_OF_STEP
    return ACCEPTED if pref_ids == base_ids else ANSWERS_DIFFER


def choose_sentinels(vocab_size: int, tokenizer_size: int, special_ids, avoid) -> tuple[int, int]:
    """Two token ids for `sentinel` and `unusable`: ids past the tokenizer's last token (rows
    of the output layer no text maps to) first, then the tokenizer's special tokens, highest
    first (unused ones such as reserved tokens sit at the end), then the vocabulary's last
    ids; never an id of `avoid` (EOS, BOS, padding, tokens of the chat template)."""
    avoid = set(avoid)
    padding = range(vocab_size - 1, min(tokenizer_size, vocab_size) - 1, -1)
    specials = sorted({i for i in special_ids if 0 <= i < vocab_size}, reverse=True)
    found: list[int] = []
    for candidates in (padding, specials, range(vocab_size - 1, -1, -1)):
        for token in candidates:
            if token not in avoid and token not in found:
                found.append(token)
            if len(found) == 2:
                return found[0], found[1]
    raise ValueError(f"no two sentinel tokens left in a vocabulary of {vocab_size}")
