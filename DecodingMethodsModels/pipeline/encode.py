"""Stage 2 of a run: every question's two prompts (with and without the preference) as token
ids, checked against the model's context, and cut from the left when asked to."""

from __future__ import annotations

import warnings

from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.pipeline.eval_data import Dataset
from DecodingMethodsModels.pipeline.plan import Work


def encode_questions(tokenizer, dataset: Dataset, preference: str, system_role: bool,
                     context: int | None, config, pad_set: str | None = None
                     ) -> tuple[list[list[int]], list[list[int]]]:
    """(preference prompt ids, base prompt ids) per question, both built from the same question
    text: the paper's system prompt with and without the preference sentence, or, for one of
    PAD's principle sets (`pad_set`), the user turn with and without PAD's preference prompt.
    A question too long for the context is refused, or, if asked, cut from the left once
    so that the longer of its two prompts fits, and both prompts are built from that cut text:
    LA and Amulet then contrast two prompts about the same question. `--prompt_style raw`
    (args only) is public ARGS's prompt: the question text tokenised with the tokenizer's
    special tokens, no chat template, no system or preference text, for both prompts.
    `--prompt_style costeer` is CoSteer's (prompts/costeer.py): the preference after the
    question in the user turn, the plain question for the base prompt."""
    from DecodingMethodsModels.prompts.amulet import encode_prompt
    from DecodingMethodsModels.prompts.costeer import encode_costeer_prompt
    from DecodingMethodsModels.prompts.pad import encode_pad_prompt

    def encode(question: str) -> tuple[list[int], list[int]]:
        if config.prompt_style == "raw":
            ids = tokenizer(question)["input_ids"]
            return ids, ids
        if config.prompt_style == "costeer":
            return tuple(encode_costeer_prompt(tokenizer, question, sentence, system_role)
                         for sentence in (preference, ""))
        if pad_set is not None:
            return tuple(encode_pad_prompt(tokenizer, question, name) for name in (pad_set, None))
        return tuple(
            encode_prompt(tokenizer, question, sentence, system_role,
                          reference=config.reference_prompts)
            for sentence in (preference, "")
        )

    pref_prompts, base_prompts = [], []
    for q in dataset.questions:
        pref, base = encode(q.question)
        longest = max(len(pref), len(base))
        excess = longest + config.max_new_tokens - context if context else 0
        where = f"{dataset.path}: question index {q.index}"
        if excess > 0:
            if not config.truncate_long_prompts:
                raise UserError(
                    f"{where} needs {longest} prompt tokens + {config.max_new_tokens} new tokens"
                    f", more than the model's context of {context}; pass --truncate_long_prompts "
                    "to cut it from the left, or lower --max_new_tokens"
                )
            question_ids = tokenizer(q.question, add_special_tokens=False)["input_ids"]
            if excess >= len(question_ids):
                raise UserError(f"{where}: the prompt without the question already exceeds the "
                                f"model's context of {context}; lower --max_new_tokens")
            cut = tokenizer.decode(question_ids[excess + 8:])  # margin for re-tokenisation
            pref, base = encode(cut)
            if max(len(pref), len(base)) + config.max_new_tokens > context:
                raise UserError(f"{where} could not be cut to fit the model's context")
            warnings.warn(f"{where} cut from the left by {excess + 8} tokens to fit the "
                          f"model's context of {context}", stacklevel=2)
        pref_prompts.append(pref)
        base_prompts.append(base)
    return pref_prompts, base_prompts


def encode_all(todo: list[Work], tokenizer, system_role: bool, context: int | None,
               config) -> dict[tuple[str, str], tuple[list[list[int]], list[list[int]]]]:
    """(preference ids, base ids) of every (preference, dataset) the runs need."""
    prompts = {}
    for work in todo:
        key = (work.run.preference, work.run.dataset.name)
        if key not in prompts:
            prompts[key] = encode_questions(
                tokenizer, work.run.dataset, work.run.preference, system_role, context, config,
                work.run.pad_set,
            )
    return prompts


def model_context(model_config) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def configured_context(source, trust_remote_code: bool) -> int | None:
    """The model's context length from its configuration alone, before any weight is loaded
    (None if the configuration cannot be read that way: then it is taken from the model)."""
    from transformers import AutoConfig

    from DecodingMethodsModels.models.loading import conversion_cache

    where = source.path
    if source.gguf_file:
        where = conversion_cache(source, "model")
        if where is None or not where.is_dir():
            return None  # reading a GGUF's configuration costs seconds: check after loading
    try:
        model_config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError):
        return None
    return model_context(model_config)

