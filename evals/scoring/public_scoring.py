"""The token ids a scorer reads, as the public codes' ``measure_reward.py`` build them.

``--scoring`` of ``rm_evals`` (the public codes' output files only, ``--input_file``):

- ``project`` (default): the response cut at its end of turn, in the conversation of
  :func:`evals.scoring.reward_model.scoring_ids` (see :mod:`evals.scoring.scoring_inputs`).
- ``args``: ARGS's ``measure_reward.py`` (``--experiment hhrlhf``): the text
  ``prompt + continuation``, the continuation being the record's ``response`` without its
  ``prompt`` prefix, cut before its first ``human:`` (any case) and not stripped; tokenised
  with special tokens and no chat template, whatever the scorer; inputs of
  :data:`ARGS_SKIP_AT` tokens or more are skipped.
- ``pad``: PAD's ``measure_reward.py``: the record's ``result`` (a ``result`` that starts with
  ``": "`` after its prompt loses those two characters; ``system\\n\\nuser\\n\\n`` removed
  wherever it occurs), then

  * a scorer with a chat template (PAD's ArmoRM path): the user turn is the text before the
    first ``assistant\\n\\n``, stripped, from which everything up to the end of the first
    ``[Instruction]`` is removed; the assistant turn is everything after that header,
    stripped (no end-of-turn cut: later turns stay in). Without ``[Instruction]`` PAD's
    slice removes the first 12 characters of the user turn (``user\\n\\n`` and six of the
    question), and so does this;
  * a scorer without one (PAD's GPT-2 path): the first ``assistant`` becomes
    ``" Assistant:"`` and the first ``user`` then ``"Human:"``, the text from ``[Guidelines]``
    to the end of ``[Instruction]`` is removed (the space after it stays), tokenised with
    special tokens; inputs of :data:`PAD_SKIP_AT` tokens or more are skipped, and a scorer
    whose name holds ``humor`` (PAD's own test) reads the first :data:`PAD_HUMOR_CUT` tokens
    of a longer input.

These are string operations on the stored text, transcribed from the public scripts so that
their numbers can be reproduced; both scripts read the first occurrence of each word, even
inside the question.
"""

from __future__ import annotations

import re

from evals.errors import EvalError

SCORING_MODES = ("project", "args", "pad")
ARGS_SKIP_AT = 1334  # ARGS's measure_reward.py: `if tokens.shape[1] >= 1334: return None`
PAD_SKIP_AT = 1024  # PAD's measure_reward.py, the GPT-2 path
PAD_HUMOR_CUT = 512  # PAD's measure_reward.py: the humour classifier reads tokens[:, :512]
_HUMAN = re.compile("human:", re.IGNORECASE)
_HH_DIALOGUE = re.compile(r"\s*Human:.*\sAssistant:\s*\Z", re.DOTALL)
_HH_TURN = re.compile(r"(?:\A|\s)(Human|Assistant):")


def cut_at_human(text: str) -> str:
    """``text`` before its first ``human:`` in any case, as ARGS cuts a response.

    >>> cut_at_human(" Boil it.\\n\\nHUMAN: and then?")
    ' Boil it.\\n\\n'
    """
    return _HUMAN.split(text, maxsplit=1)[0]


def is_hh_dialogue(prompt: str) -> bool:
    """Whether ``prompt`` is an Anthropic HH-RLHF dialogue waiting for the assistant
    (``"\\n\\nHuman: ...\\n\\nAssistant:"``), as ARGS's prompts are.

    >>> is_hh_dialogue("\\n\\nHuman: Hi\\n\\nAssistant:"), is_hh_dialogue("Hi")
    (True, False)
    """
    return _HH_DIALOGUE.match(prompt) is not None


def hh_dialogue_messages(prompt: str) -> list[dict]:
    """The turns of an HH dialogue as chat messages (``Human`` = user), without the empty
    assistant turn it ends with.

    >>> turns = hh_dialogue_messages("\\n\\nHuman: Hi\\n\\nAssistant: Hello\\n\\nHuman: Tea?"
    ...                              "\\n\\nAssistant:")
    >>> [(m["role"], m["content"]) for m in turns]
    [('user', 'Hi'), ('assistant', 'Hello'), ('user', 'Tea?')]
    """
    parts = _HH_TURN.split(prompt)  # [before, role, text, role, text, ...]
    roles = {"Human": "user", "Assistant": "assistant"}
    messages = [{"role": roles[role], "content": text.strip()}
                for role, text in zip(parts[1::2], parts[2::2], strict=True)]
    return messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages


def _field(record: dict, names: tuple[str, ...]) -> str:
    for name in names:
        if isinstance(record.get(name), str):
            return record[name]
    raise EvalError(f"an output record has none of {', '.join(names)} as a string")


def args_scoring_text(record: dict) -> str:
    """What ARGS's ``measure_reward.py`` scores of one record (module doc, ``args``).

    >>> args_scoring_text({"prompt": "\\n\\nHuman: Hi\\n\\nAssistant:",
    ...                    "response": "\\n\\nHuman: Hi\\n\\nAssistant: Hello!\\n\\nHuman: Bye"})
    '\\n\\nHuman: Hi\\n\\nAssistant: Hello!\\n\\n'
    """
    prompt = record["prompt"]
    output = _field(record, ("response", "output")).removeprefix(prompt)
    return prompt + cut_at_human(output)


def pad_record_text(record: dict) -> str:
    """The text PAD's ``measure_reward.py`` starts from (``extract_out``, module doc).

    >>> pad_record_text({"prompt": "Q", "result": "system\\n\\nuser\\n\\nQassistant\\n\\nA"})
    'Qassistant\\n\\nA'
    """
    output = _field(record, ("result", "output", "response"))
    after_prompt = output.removeprefix(record["prompt"])
    if after_prompt.startswith(": "):
        output = after_prompt[2:]
    return output.replace("system\n\nuser\n\n", "")


def pad_chat_messages(text: str) -> list[dict]:
    """PAD's ArmoRM path: ``[user, assistant]`` messages of :func:`pad_record_text`'s text.

    >>> pad_chat_messages("user\\n\\n[Guidelines] x [Instruction] Q?assistant\\n\\nA.user\\n\\nB")
    [{'role': 'user', 'content': ' Q?'}, {'role': 'assistant', 'content': 'A.user\\n\\nB'}]
    """
    at = text.find("assistant\n\n")
    response = text[at + 11:].strip()
    query = text[:at].strip()
    instruction = text.find("[Instruction]")
    query = query.replace(query[:instruction + 13], "")
    return [{"role": "user", "content": query}, {"role": "assistant", "content": response}]


def pad_plain_text(text: str) -> str:
    """PAD's GPT-2 path: the text a scorer without a chat template reads.

    >>> pad_plain_text("user\\n\\n[Guidelines] x [Instruction] Q?assistant\\n\\nA.user\\n\\nB")
    'Human:\\n\\n Q? Assistant:\\n\\nA.user\\n\\nB'
    """
    text = text.replace("assistant", " Assistant:", 1)
    text = text.replace("user", "Human:", 1)
    start, end = text.find("[Guidelines]"), text.find("[Instruction]")
    return text.replace(text[start:end + 13], "")
