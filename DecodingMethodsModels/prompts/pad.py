"""PAD's preference prompt, verbatim from PAD's public code, and its seven principle sets.

The prompt is prepended to the question in the user turn; there is no system turn (a chat
template may still add its own default one). A set of principles is named by its principles in
alphabetical order, joined without spaces, as PAD's config files are: `harmless`,
`helpfulness`, `humor`, `harmlesshelpfulness`, `harmlesshumor`, `helpfulnesshumor`,
`harmlesshelpfulnesshumor`. The "vanilla" baseline has no preference prompt (name None).
"""

from __future__ import annotations

import difflib
from itertools import combinations

from DecodingMethodsModels.errors import UserError

PAD_PREFERENCE_PROMPT = (
    "[Guidelines] Your task is to generate response by considering the following principle. "
    "[Principles] {principles} [Instruction] "
)
PRINCIPLES = ("harmless", "helpfulness", "humor")


def _all_sets() -> dict[str, str]:
    sets = {}
    for size in range(1, len(PRINCIPLES) + 1):
        for chosen in combinations(PRINCIPLES, size):
            sets["".join(chosen)] = " and ".join(chosen)
    return sets


# name -> the {principles} text, e.g. "harmlesshumor" -> "harmless and humor"
PRINCIPLE_SETS: dict[str, str] = _all_sets()


def principle_set_name(principles: list[str] | tuple[str, ...]) -> str:
    """The name of a set of principles given in any order, e.g. ["humor", "harmless"]."""
    unknown = [p for p in principles if p not in PRINCIPLES]
    if unknown or not principles or len(set(principles)) != len(principles):
        raise UserError(
            f"principles must be distinct names from {PRINCIPLES}, got {list(principles)}"
        )
    return "".join(sorted(principles))


def principles_text(name: str) -> str:
    """The `{principles}` text of a named set: "helpfulnesshumor" -> "helpfulness and humor"."""
    if name in PRINCIPLE_SETS:
        return PRINCIPLE_SETS[name]
    close = difflib.get_close_matches(name, PRINCIPLE_SETS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UserError(
        f"unknown PAD principle set {name!r}{hint}; choose from: {', '.join(PRINCIPLE_SETS)}"
    )


def preference_prompt(name: str | None) -> str:
    """PAD's preference prompt for a named principle set; "" for the vanilla baseline (None)."""
    if name is None:
        return ""
    return PAD_PREFERENCE_PROMPT.format(principles=principles_text(name))


def pad_messages(question: str, name: str | None) -> list[dict]:
    """The chat messages PAD decodes from: one user turn, the preference prompt first."""
    return [{"role": "user", "content": preference_prompt(name) + question}]


def encode_pad_prompt(tokenizer, question: str, name: str | None) -> list[int]:
    """Token ids of the templated PAD prompt with the assistant header, exactly one BOS."""
    text = tokenizer.apply_chat_template(
        pad_messages(question, name), tokenize=False, add_generation_prompt=True
    )
    # the template already writes any BOS it wants; adding special tokens again would double it
    return tokenizer(text, add_special_tokens=False)["input_ids"]
