"""What a scorer reads: the prompt it is shown, and the responses of public ARGS/PAD outputs.

Prompt modes (``--scorer_prompt``):

- ``question``: the plain question. PAD's protocol: its ``measure_reward.py`` cuts the
  preference prompt ``[Guidelines] ... [Principles] {principles} [Instruction] `` out before
  scoring.
- ``question_and_preference``: ``question + " " + preference``, Amulet's protocol (section 5).
- ``auto``: ``question`` for PAD's family (the preference is PAD's preference prompt, or a set
  of PAD principles such as ``harmless and humor``, or empty), else
  ``question_and_preference``.

Whatever the mode, a PAD preference prompt found at the start of a question is cut out.
"""

from __future__ import annotations

import re
from pathlib import Path

from evals.errors import EvalError
from evals.scoring.public_scoring import cut_at_human, is_hh_dialogue
from evals.scoring.responses import Item, RunKey, RunResponses, read_json_list

PROMPT_MODES = ("auto", "question", "question_and_preference")
PAD_PRINCIPLES = ("harmless", "helpfulness", "humor")
_PAD_PROMPT = re.compile(
    r"\s*\[Guidelines\].*?\[Principles\]\s*(?P<principles>.*?)\s*\[Instruction\] ?", re.DOTALL
)
# End-of-turn markers as text: present only when special tokens were kept in decoding.
END_OF_TURN_MARKERS = (
    "<|eot_id|>", "<|im_end|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<|end|>",
    "<end_of_turn>",
)
# A chat turn header whose special tokens were skipped in decoding ("...answer.user\n\n", or
# ChatML's "...answer.\nuser\n"): the role word glued to the text before it, or after a
# newline, or at the very start, then a newline.
_BARE_HEADER = re.compile(
    r"(?:^|(?<=\S)|(?<=\n))(?:system|user|assistant)(?:<\|end_header_id\|>)?\n")
_ASSISTANT_HEADER = re.compile(r"assistant(?:<\|end_header_id\|>)?\s*")
_CHAT_START = re.compile(r"(?:<\|start_header_id\|>)?(?:system|user)(?:<\|end_header_id\|>)?\n")


def split_pad_prompt(text: str) -> tuple[str | None, str]:
    """``(principles, rest)`` if ``text`` starts with PAD's preference prompt, else
    ``(None, text)``.

    The prompt is cut up to and including ``[Instruction]`` and the one space after it.

    >>> split_pad_prompt("[Guidelines] Your task is to generate response by considering the "
    ...                  "following principle. [Principles] humor [Instruction] Why?")
    ('humor', 'Why?')
    >>> split_pad_prompt("Why?")
    (None, 'Why?')
    """
    match = _PAD_PROMPT.match(text)
    if match is None:
        return None, text
    return match.group("principles"), text[match.end():]


def is_pad_preference(preference: str) -> bool:
    """Whether ``preference`` belongs to PAD's family: empty (PAD's vanilla baseline), PAD's
    preference prompt, or PAD principles joined by ``and`` (``"harmless and humor"``).

    >>> is_pad_preference("helpfulness and humor"), is_pad_preference("Be creative.")
    (True, False)
    """
    text = preference.strip()
    if not text or split_pad_prompt(text)[0] is not None:
        return True
    parts = [p.strip() for p in text.split(" and ")]
    return all(p in PAD_PRINCIPLES for p in parts)


def resolve_prompt_mode(mode: str, preferences: list[str]) -> str:
    """``auto`` -> ``question`` when every preference is PAD's (see :func:`is_pad_preference`),
    else ``question_and_preference``; other modes are returned as they are."""
    if mode not in PROMPT_MODES:
        raise EvalError(f"--scorer_prompt {mode!r}: choose one of {', '.join(PROMPT_MODES)}")
    if mode != "auto":
        return mode
    if all(is_pad_preference(p) for p in preferences):
        return "question"
    return "question_and_preference"


def scorer_prompt(question: str, preference: str, mode: str) -> str:
    """The user turn a scorer sees: the question without any PAD preference prompt, followed
    by ``" " + preference`` in mode ``question_and_preference`` (``mode`` already resolved)."""
    question = split_pad_prompt(question)[1]
    if mode == "question":
        return question
    if mode == "question_and_preference":
        return f"{question} {preference}"
    raise EvalError(f"prompt mode {mode!r} must be resolved first (question, "
                    "question_and_preference)")


def extract_args_pad_response(prompt: str, result: str) -> str:
    """The response in an ARGS/PAD output record, cut at its first end of turn.

    PAD's ``result`` is the decoded whole sequence (special tokens skipped) with the prompt
    "removed" by ``removeprefix``, which removes nothing under a chat template: it reads
    ``user\\n\\n{prompt}assistant\\n\\n{response}user\\n\\n...``. So:

    1. start: if ``prompt`` occurs in ``result``, after the first ``assistant`` header that
       follows it (chat template); else if ``result`` starts with a ``system`` or ``user``
       turn header, after its first ``assistant`` header; otherwise ``result`` is the
       continuation itself (a prefix that was removed). A ``prompt`` that is an HH-RLHF
       dialogue (ARGS's raw-text prompts) is always the raw case: ``result`` after the
       prompt if it starts with it, else ``result``;
    2. end: the first end-of-turn marker kept as text (``<|eot_id|>``, ``<|im_end|>``,
       ``</s>``, ...); in the chat case also the first bare turn header (``user``,
       ``assistant`` or ``system`` glued to the text before it or following a newline, then
       a newline), which is what a skipped ``<|eot_id|><|start_header_id|>user<|end_header_id|>``
       or ChatML's ``<|im_end|>\\n<|im_start|>user`` leaves; in the raw case also the first
       ``human:`` in any case, where ARGS's ``measure_reward.py`` cuts (the next turn of its
       HH-RLHF prompts);
    3. surrounding whitespace stripped.

    A response whose own text glues ``user``/``assistant`` to a newline (``superuser\\n``)
    would be cut there too; decode with special tokens kept to avoid the guess.
    """
    at = result.find(prompt) if prompt else -1
    # a decoded conversation whose prompt text did not survive decoding exactly
    chat = at >= 0 or _CHAT_START.match(result) is not None
    if is_hh_dialogue(prompt):
        chat, result = False, result.removeprefix(prompt)
    if chat:
        rest = result[at + len(prompt):] if at >= 0 else result
        header = _ASSISTANT_HEADER.search(rest)
        text = rest[header.end():] if header else rest
    else:
        text = result
    ends = [text.find(m) for m in END_OF_TURN_MARKERS if m in text]
    if chat:
        bare = _BARE_HEADER.search(text)
        if bare:
            ends.append(bare.start())
    else:
        ends.append(len(cut_at_human(text)))
    return (text[:min(ends)] if ends else text).strip()


def read_args_pad_file(path: Path) -> list[dict]:
    """One ARGS/PAD output file as ``[{"index", "question", "preference", "response",
    "record"}]``.

    ``index`` is the record's position; ``question`` is ``prompt`` without PAD's preference
    prompt and ``preference`` its principles ("" without one); ``response`` comes from
    :func:`extract_args_pad_response`; ``record`` is the record as stored.
    """
    records = []
    for number, record in enumerate(read_json_list(path, "ARGS/PAD output records")):
        if not isinstance(record, dict):
            raise EvalError(f"{path}: record {number} is not a JSON object")
        prompt, result = record.get("prompt"), record.get("result")
        if not isinstance(prompt, str) or not isinstance(result, str):
            raise EvalError(f"{path}: record {number} needs 'prompt' and 'result' as strings "
                            "(the format of ARGS's and PAD's collect_model_outs.py)")
        principles, question = split_pad_prompt(prompt)
        records.append({"index": number, "question": question, "preference": principles or "",
                        "response": extract_args_pad_response(prompt, result),
                        "record": record})
    return records


def parse_input_file(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (the method is then named by the file's stem).

    >>> parse_input_file("pad=out/psoups_0.jsonl")
    ('pad', PosixPath('out/psoups_0.jsonl'))
    """
    name, sep, path = spec.partition("=")
    if not sep:
        return Path(spec).stem, Path(spec)
    if not name or not path:
        raise EvalError(f"--input_file {spec!r}: give PATH or NAME=PATH")
    return name, Path(path)


def load_args_pad_run(files: list[tuple[str, Path]], key: RunKey) -> RunResponses:
    """Several ARGS/PAD output files (one per method) as one run.

    Every file must hold the same questions in the same order (a public run skips a prompt
    that is too long, which would misalign them); the preference may differ per method
    (PAD's vanilla baseline has none), and the run keeps the first non-empty one.
    """
    names = [n for n, _ in files]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise EvalError(f"--input_file names {', '.join(duplicates)} more than once; "
                        "name them apart with NAME=PATH")
    by_method = {name: read_args_pad_file(path) for name, path in files}
    first_name, first = next(iter(by_method.items()))
    for name, records in by_method.items():
        if [r["question"] for r in records] != [r["question"] for r in first]:
            raise EvalError(f"the inputs of {first_name} and {name} hold different questions "
                            f"({len(first)} and {len(records)} records); score them apart")
    preferences = [next((r["preference"] for r in recs if r["preference"]), "")
                   for recs in by_method.values()]
    preference = next((p for p in preferences if p), "")
    items = tuple(Item(r["index"], r["question"], preference) for r in first)
    texts = {m: {r["index"]: r["response"] for r in recs} for m, recs in by_method.items()}
    records = {m: {r["index"]: r["record"] for r in recs} for m, recs in by_method.items()}
    return RunResponses(key, items, texts, records=records)
