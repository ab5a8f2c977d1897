"""ARGS and PAD in the CLI: the runs a command asks for, their guide model, and one batch of
one run decoded by the reward-guided engine (engines/reward_guided.py).

A run's settings (w, k, mode, sample_temp) come from the flags, or one line each from a
`--config` JSON-lines file; a grid's runs are written to `{method}_{settings}.json` so that
they never overwrite each other. Both methods decode on the run's preference prompt, exactly as
`pref` does, and the guide reads the same ids: ARGS's reward model scores [prompt, tokens so
far, candidate], PAD's PersRM reads [prompt, tokens so far]. `--rm_name self` is implicit PAD:
the decoding model reads the base prompt and, under the preference prompt, is its own PersRM.
Nothing here imports torch at import time: the planner uses it before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.pipeline.guided_config import SELF, GuidedRunConfig, guide_dtype


def guide_device(config, process, decoding_device: str) -> str:
    """Where the guide lives: --rm_device (spread over GPUs by rank like --device), or the
    decoding model's device."""
    from DecodingMethodsModels.models.loading import resolve_device
    from DecodingMethodsModels.pipeline.distributed import rank_device

    if config.rm_device is None:
        return decoding_device
    return rank_device(resolve_device(config.rm_device), process, False)


def check_guide_tokenizer(config, tokenizer, prompt_ids=(), say=None):
    """The guide's tokenizer against the decoding model's, on the tokenizers and the run's
    prompts before any weight loads (engines/token_ids.py: every token string text can produce
    and every prompt must get the same ids). ARGS's reward model must give the same ids. PAD:
    `pad_rule` picks the first rule (same ids) or the second (re-encoded text) and says which in
    the log (`say`). Returns (the retokenized_pad.Retokenizer of the second rule or None, the
    rule's facts for the sidecar)."""
    from DecodingMethodsModels.engines.token_ids import check_same_tokenizer, id_differences
    from DecodingMethodsModels.models.guides import load_guide_tokenizer

    if config.rm_name == SELF:
        return None, {}
    guide_tokenizer = load_guide_tokenizer(config.rm_name, config.trust_remote_code)
    if config.guided_methods == ["args"]:
        check_same_tokenizer(tokenizer, guide_tokenizer, "reward model", prompt_ids)
        return None, {}
    differences = id_differences(tokenizer, guide_tokenizer, prompt_ids, limit=1)
    rule, why = pad_rule(config.pad_rule, config.model_name, differences)
    facts = {"pad_rule": rule, "pad_rule_chosen_by": config.pad_rule, "pad_rule_why": why}
    if say is not None:
        say(f"PAD: {RULE_NAMES[rule]}: {why}")
    if rule == "same_ids":
        return None, facts
    from DecodingMethodsModels.engines.retokenized_pad import Retokenizer

    return Retokenizer(tokenizer, guide_tokenizer), facts


RULE_NAMES = {"same_ids": "the first rule (the PersRM reads the decoding model's ids)",
              "retokenized": "the second rule (the PersRM reads the text re-encoded by its "
                             "tokenizer)"}


def pad_rule(choice: str, model_name: str, differences: list[str]) -> tuple[str, str]:
    """(rule, why) for `--pad_rule choice`: "same_ids" or "retokenized". auto: same_ids
    exactly when the tokenizers give the same ids (`differences` empty); path: PAD.py's test,
    same_ids when `model_name` contains "Llama-3". The first rule on tokenizers that give other
    ids is refused: the PersRM's logits would be read at ids meaning other tokens."""
    same = not differences
    if choice == "auto":
        rule = "same_ids" if same else "retokenized"
        why = ("the PersRM's tokenizer gives the decoding model's ids" if same else
               f"the PersRM's tokenizer gives other ids ({differences[0]})")
    elif choice == "path":
        rule = "same_ids" if "Llama-3" in model_name else "retokenized"
        why = (f"--pad_rule path: {model_name!r} "
               f"{'contains' if rule == 'same_ids' else 'does not contain'} 'Llama-3'")
    else:
        rule, why = choice, f"--pad_rule {choice}"
    if rule == "same_ids" and not same:
        raise UserError(f"PAD's first rule ({why}) needs a PersRM whose tokenizer gives the "
                        f"decoding model's ids, but {differences[0]}: use --pad_rule auto or "
                        "retokenized")
    return rule, why


def guide_context(config) -> int | None:
    """The guide's context length from its configuration (None: unknown, or `self`)."""
    from DecodingMethodsModels.models.loading import resolve_model
    from DecodingMethodsModels.pipeline.encode import configured_context

    if config.rm_name == SELF:
        return None
    return configured_context(resolve_model(config.rm_name), config.trust_remote_code)


@dataclass
class Guide:
    """The decoding model with its guide, and what every reward-guided batch shares."""

    model: object
    guide_model: object | None  # None: implicit PAD (the decoding model guides itself)
    method: str
    max_new_tokens: int
    eos_ids: list[int]
    pad_id: int
    ignore_eos: bool = False
    rm_batch_size: int | None = None
    retokenizer: object | None = None  # PAD's second rule: a PersRM of another tokenizer

    def settings(self, run: GuidedRunConfig):
        from DecodingMethodsModels.engines.reward_guided import GuidedSettings

        return GuidedSettings.from_run(run, self.max_new_tokens, self.eos_ids, self.pad_id,
                                       ignore_eos=self.ignore_eos,
                                       rm_batch_size=self.rm_batch_size)

    def check(self, runs: list[GuidedRunConfig]) -> None:
        """Every run's k against the vocabulary, and the guide's kind, before decoding."""
        from DecodingMethodsModels.engines.guided_settings import (
            check_reward_model,
            vocabulary_size,
        )

        vocab = vocabulary_size(self.model)
        for run in runs:
            if run.topk > vocab:
                where = f" (--config line {run.line})" if run.line else ""
                raise UserError(f"--topk {run.topk}{where} is larger than the decoding model's "
                                f"vocabulary ({vocab} tokens)")
        if self.method == "args":
            check_reward_model(self.guide_model, vocab)
        elif (self.guide_model is not None and self.retokenizer is None
              and vocabulary_size(self.guide_model) < vocab):
            raise UserError(f"the PersRM scores {vocabulary_size(self.guide_model)} token ids "
                            f"but the decoding model writes {vocab}: they must share one "
                            "tokenizer")

    def decode(self, run: GuidedRunConfig, pref_ids: list[list[int]],
               base_ids: list[list[int]], seed: int) -> list[list[int]]:
        """One batch: the generated ids per question, the ending EOS included."""
        import torch

        from DecodingMethodsModels.engines.core import model_input_device
        from DecodingMethodsModels.engines.reward_guided import (
            decode_args,
            decode_pad,
            decode_pad_implicit,
        )

        settings = self.settings(run)
        generator = None
        if settings.mode == "topk":
            generator = torch.Generator(device=model_input_device(self.model)).manual_seed(seed)
        if self.method == "args":
            result = decode_args(self.model, self.guide_model, pref_ids, settings, generator)
        elif self.guide_model is None:
            result = decode_pad_implicit(self.model, base_ids, pref_ids, settings, generator)
        else:
            result = decode_pad(self.model, self.guide_model, pref_ids, settings, generator,
                                retokenizer=self.retokenizer)
        return result.token_ids

    def stream(self, run: GuidedRunConfig, pref_ids: list[list[int]],
               base_ids: list[list[int]], batch_size: int):
        """Greedy runs over many questions, at most `batch_size` in flight (a question joins
        as soon as a slot frees): yields (question number, generated ids) as each finishes.
        The tokens are those of one batch per question."""
        from DecodingMethodsModels.engines.reward_guided import (
            stream_args,
            stream_pad,
            stream_pad_implicit,
        )

        settings = self.settings(run)
        if self.method == "args":
            return stream_args(self.model, self.guide_model, pref_ids, settings, batch_size)
        if self.guide_model is None:
            return stream_pad_implicit(self.model, base_ids, pref_ids, settings, batch_size)
        return stream_pad(self.model, self.guide_model, pref_ids, settings, batch_size,
                          retokenizer=self.retokenizer)


def load_guide(config, device: str, model, eos_ids: list[int], pad_id: int,
               runs: list[GuidedRunConfig], retokenizer=None,
               rule_facts: dict | None = None) -> tuple[Guide, dict]:
    """The guide of the command's reward-guided method, loaded and checked; facts for the
    sidecar. `retokenizer`, `rule_facts`: check_guide_tokenizer's (PAD's rule)."""
    from DecodingMethodsModels.models.guides import load_persrm, load_reward_model

    method = config.guided_methods[0]
    dtype = guide_dtype(config)
    guide_model = None
    if config.rm_name != SELF:
        load = load_reward_model if method == "args" else load_persrm
        guide_model = load(config.rm_name, device, dtype, config.trust_remote_code)
    guide = Guide(model, guide_model, method, config.max_new_tokens, eos_ids, pad_id,
                  config.ignore_eos, config.rm_batch_size, retokenizer)
    guide.check(runs)
    facts = {"rm_name": config.rm_name}
    if retokenizer is not None:
        facts["retokenized"] = True  # PAD's second rule
    facts.update(rule_facts or {})
    if guide_model is not None:
        facts.update(rm_device=device, rm_dtype=str(guide_model.dtype).removeprefix("torch."))
    if guide_model is not None and method == "pad":
        from DecodingMethodsModels.models.value_head import value_head_facts

        facts["value_head"] = value_head_facts(guide_model)  # None: the plain LM head
    return guide, {"guide": facts}
