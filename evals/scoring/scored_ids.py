"""The token ids a scorer reads for one response, by ``--scoring``: the project's conversation
(:func:`evals.scoring.reward_model.scoring_ids` of the prompt :mod:`evals.scoring.scoring_inputs`
chooses), or the text a public code's ``measure_reward.py`` builds from its stored record
(:mod:`evals.scoring.public_scoring`)."""

from __future__ import annotations

from evals.errors import EvalError
from evals.scoring import public_scoring
from evals.scoring.public_scoring import (
    PAD_HUMOR_CUT,
    SCORING_MODES,
    args_scoring_text,
    pad_chat_messages,
    pad_plain_text,
    pad_record_text,
)
from evals.scoring.reward_model import message_ids, scoring_ids
from evals.scoring.scoring_inputs import scorer_prompt


def public_ids(rm, record: dict, scoring: str) -> tuple[list[int], int | None]:
    """``(ids, skip_at)``: the token ids ``scoring`` (``args`` or ``pad``) scores for one
    output record with the scorer ``rm``, and the length from which the public script skips
    an input (None: only the scorer's own context)."""
    tokenizer = rm.tokenizer
    if scoring == "args":
        return list(tokenizer(args_scoring_text(record))["input_ids"]), public_scoring.ARGS_SKIP_AT
    if scoring != "pad":
        raise EvalError(f"--scoring {scoring!r}: choose one of {', '.join(SCORING_MODES)}")
    text = pad_record_text(record)
    if rm.input_format == "chat_template":
        return message_ids(tokenizer, pad_chat_messages(text)), None
    ids = list(tokenizer(pad_plain_text(text))["input_ids"])
    if "humor" in rm.name and PAD_HUMOR_CUT <= len(ids) < public_scoring.PAD_SKIP_AT:
        ids = ids[:PAD_HUMOR_CUT]
    return ids, public_scoring.PAD_SKIP_AT


def conversation_ids(rm, responses, method: str, item, scoring: str,
                     mode: str) -> tuple[list[int], int | None]:
    """``(ids, skip_at)`` of one response of a run by ``--scoring``: :func:`public_ids` of its
    stored record, or (``project``) :func:`evals.scoring.reward_model.scoring_ids` of the
    prompt that ``mode`` (resolved) shows and the response (``skip_at`` None)."""
    if scoring != "project":
        return public_ids(rm, responses.records[method][item.index], scoring)
    prompt = scorer_prompt(item.question, item.preference, mode)
    return scoring_ids(rm, prompt, responses.texts[method][item.index]), None
