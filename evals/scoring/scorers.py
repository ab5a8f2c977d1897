"""Scorer specs ``NAME_OR_PATH[:HEAD]`` and the number each one reads from a saved score record.

A saved record holds a model's whole output for one response: ``{"rewards": [K], "score"}``
for ArmoRM-like models, ``{"logits": [C]}`` for sequence classifiers. A *head* picks one
number out of it:

- ArmoRM: ``HEAD`` = a head index (0-18) or name (``ultrafeedback-instruction_following``,
  ...; default 6), or ``score`` for the gated score;
- a classifier with one label (a reward model): its logit, the scalar reward (no ``HEAD``);
- a classifier with several labels: the softmax probability of one label, named by index
  (``:1``) or by ``config.id2label`` (``:humor``, case-insensitive); ``:logit:humor`` or
  ``:logit:1`` reads the raw logit instead (PAD's ``measure_reward.py`` reports the humour
  classifier's raw logit 1).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from evals.errors import EvalError
from evals.scoring.reward_model import ARMORM_HEADS


class ScorerSpecError(EvalError):
    """A scorer spec that names no head of its model: a usage error (exit code 2)."""


@dataclass(frozen=True)
class ScorerSpec:
    """One ``--scorer`` as given: the model and the head text (None: the model's default).

    ``legacy`` marks the ``--rm_name``/``--rm_dimension`` scorer, whose index on a classifier
    is a raw logit as before.
    """

    model: str
    head: str | None = None
    legacy: bool = False


@dataclass(frozen=True)
class OutputShape:
    """What a model returns per response: ``kind`` ``rewards`` (ArmoRM-like, with gated score)
    or ``logits``; ``size`` outputs; ``names`` per output when known (else ``()``)."""

    kind: str
    size: int
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Head:
    """One number of a record: ``kind`` in ``reward`` (``rewards[index]``), ``score``,
    ``logit`` (``logits[index]``), ``prob`` (``softmax(logits)[index]``), ``loglik`` (the
    loglik scorer's ``mean_logprob``, not a reward); ``name`` is its
    column name, ``label`` its file-name label (``dim6``, ``score``, ``logit0``, ``prob1``)."""

    kind: str
    index: int
    name: str

    @property
    def label(self) -> str:
        """File-name label, as the single-scorer outputs have always been named."""
        return {"reward": f"dim{self.index}", "score": "score", "logit": f"logit{self.index}",
                "prob": f"prob{self.index}", "loglik": "mean_logprob"}[self.kind]


def parse_scorer(text: str) -> ScorerSpec:
    """``NAME_OR_PATH[:HEAD]``; the head starts at the first ``:`` (hub ids have none).

    >>> parse_scorer("RLHFlow/ArmoRM-Llama3-8B-v0.1:10")
    ScorerSpec(model='RLHFlow/ArmoRM-Llama3-8B-v0.1', head='10', legacy=False)
    >>> parse_scorer("mohameddhiab/humor-no-humor:logit:humor").head
    'logit:humor'
    """
    model, sep, head = text.strip().partition(":")
    if not model or (sep and not head):
        raise ScorerSpecError(f"--scorer {text!r}: want NAME_OR_PATH or NAME_OR_PATH:HEAD")
    return ScorerSpec(model, head if sep else None)


def _index_or_name(text: str, names: tuple[str, ...], size: int, what: str) -> int:
    if re.fullmatch(r"\d+", text):
        index = int(text)
        if index >= size:
            raise ScorerSpecError(f"{what} {index} is out of range: the model has {size} "
                                  f"(0-{size - 1})")
        return index
    folded = [n.casefold() for n in names]
    if text.casefold() in folded:
        return folded.index(text.casefold())
    listing = ", ".join(names) if names else f"indices 0-{size - 1}"
    raise ScorerSpecError(f"{what} {text!r} is not one of the model's: {listing}")


def resolve_head(spec: ScorerSpec, shape: OutputShape) -> Head:
    """The :class:`Head` that ``spec`` names in a model whose outputs are ``shape``."""
    where = f"scorer {spec.model}"
    head = spec.head
    if shape.kind == "loglik":
        if head is not None:
            raise ScorerSpecError(f"{where} has one number, its mean log-probability: drop "
                                  f":{head}")
        return Head("loglik", 0, shape.names[0])
    if shape.kind == "rewards":
        if head == "score":
            return Head("score", -1, "score")
        if head is None:
            head = "6"
        index = _index_or_name(head, shape.names, shape.size, f"{where}: head")
        name = shape.names[index] if shape.names else f"head{index}"
        return Head("reward", index, name)
    if head == "score":
        raise ScorerSpecError(f"{where}: 'score' needs an ArmoRM-like model (rewards + gated "
                              "score); this one returns logits")
    raw = head is not None and head.startswith("logit:")
    if raw:
        head = head.removeprefix("logit:")
    if spec.legacy or shape.size == 1:
        index = 0 if head is None else _index_or_name(head, shape.names, shape.size,
                                                      f"{where}: logit")
        name = "reward" if shape.size == 1 else f"logit{index}"
        return Head("logit", index, name)
    if head is None:
        labels = ", ".join(shape.names) if shape.names else f"0-{shape.size - 1}"
        raise ScorerSpecError(f"{where} has {shape.size} labels; name one as {spec.model}:LABEL "
                              f"(labels: {labels})")
    index = _index_or_name(head, shape.names, shape.size, f"{where}: label")
    name = shape.names[index] if shape.names else str(index)
    return Head("logit" if raw else "prob", index, f"logit_{name}" if raw else name)


def softmax_at(logits: list[float], index: int) -> float:
    """``softmax(logits)[index] = exp(logits[index] - logsumexp(logits))``, in float64.

    >>> round(softmax_at([0.0, math.log(3.0)], 1), 12)
    0.75
    """
    top = max(logits)
    log_norm = top + math.log(sum(math.exp(x - top) for x in logits))
    return math.exp(logits[index] - log_norm)


def head_value(record: dict, head: Head) -> float:
    """The number ``head`` reads from a saved score record."""
    if head.kind == "score":
        if record.get("score") is None:
            raise EvalError("this reward model returns no gated score; pick a head index")
        return float(record["score"])
    if head.kind == "loglik":
        if record.get("mean_logprob") is None:
            raise EvalError("a saved loglik record holds no mean_logprob (an empty response?)")
        return float(record["mean_logprob"])
    if head.kind == "reward":
        values = record.get("rewards")
    else:
        values = record.get("logits")
    if values is None or not 0 <= head.index < len(values):
        raise EvalError(f"a saved score record has no {head.kind} {head.index}")
    if head.kind == "prob":
        return softmax_at([float(v) for v in values], head.index)
    return float(values[head.index])


def shape_of_record(record: dict, names: tuple[str, ...] = ()) -> OutputShape:
    """The :class:`OutputShape` a saved record shows (for models whose config cannot tell)."""
    if "rewards" in record:
        size = len(record["rewards"])
        return OutputShape("rewards", size, ARMORM_HEADS if size == len(ARMORM_HEADS) else ())
    size = len(record["logits"])
    return OutputShape("logits", size, names if len(names) == size else ())


def config_shape(config: dict, implementation: str) -> OutputShape | None:
    """The outputs a model's ``config.json`` announces (None for remote code: unknown until a
    record is scored). ArmoRM: ``num_objectives`` reward heads; a classifier: one logit per
    ``id2label`` entry, named by it."""
    if implementation == "remote-code":
        return None
    if implementation == "causal-lm-loglik":
        return OutputShape("loglik", 1, ("mean_logprob",))
    if implementation == "armorm-native":
        size = int(config.get("num_objectives", len(ARMORM_HEADS)))
        return OutputShape("rewards", size, ARMORM_HEADS if size == len(ARMORM_HEADS) else ())
    id2label = config.get("id2label") or {}
    if id2label:
        names = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
        return OutputShape("logits", len(names), names)
    return OutputShape("logits", int(config.get("num_labels", 2)))


def raw_under_pad(head, scoring: str):
    """The head a column reads: under ``--scoring pad`` a classifier's label is read as its raw
    logit, as PAD's ``measure_reward.py`` reports the humour classifier's logit 1."""
    if head is None or scoring != "pad" or head.kind != "prob":
        return head
    return Head("logit", head.index, f"logit_{head.name}")
