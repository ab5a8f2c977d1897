"""The paper's pairwise judge answered by a local Hugging Face chat model through transformers.

The messages are the API judge's (system + user, verbatim), rendered by the model's chat
template with the assistant header (the system text folded into the user turn when the
template has no system role). Decoding is greedy, at most the preset's ``max_tokens`` new
tokens, under a neutral generation config: the checkpoint's own sampling defaults and
penalties are set aside. The answer, decoded without special tokens, goes through the same
parser, re-asks, cache and order swaps as an API answer, under the judge's own name.
"""

from __future__ import annotations

from pathlib import Path

from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.models.loading import EMBEDDED_MODEL, ModelSource, resolve_model
from evals.errors import EvalError
from evals.judge.judge import PROMPT_VERSION, LocalJudgePreset
from evals.judge.judge_client import ask_until_parsed
from evals.judge.judge_protocols import AMULET, JudgeProtocol

BACKENDS = ("auto", "openai", "local")


def is_local_model(name: str) -> bool:
    """What ``--judge_backend auto`` runs locally: the embedded model, a .gguf file or an
    existing directory (a hub id needs ``--judge_backend local``)."""
    return name == EMBEDDED_MODEL or name.endswith(".gguf") or Path(name).expanduser().is_dir()


def _source(name: str) -> ModelSource:
    try:
        return resolve_model(name)
    except UserError as exc:
        raise EvalError(f"--judge_model: {exc}") from None


def judge_name(name: str) -> str:
    """The name results are labelled with: a directory's or file's name, or the hub id.
    A local path that does not exist is an error here, before anything is read or loaded."""
    source = _source(name)
    return source.short_name if is_local_model(name) else name


def local_preset(name: str, max_tokens: int, seed: int, device: str, dtype: str,
                 prompt_version: str = PROMPT_VERSION) -> LocalJudgePreset:
    """The cache-key preset of a local judge, resolved without loading any weights."""
    from DecodingMethodsModels.models.loading import resolve_device, resolve_dtype

    try:
        torch_dtype = resolve_dtype(dtype, resolve_device(device))
    except (UserError, KeyError) as exc:
        raise EvalError(f"--judge_device/--judge_dtype: {exc}") from None
    return LocalJudgePreset(model=judge_name(name), max_tokens=max_tokens, seed=seed,
                            dtype=str(torch_dtype).removeprefix("torch."),
                            prompt_version=prompt_version)


def fold_system(messages: list[dict]) -> list[dict]:
    """The system text put before the first user turn, for templates without a system role."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, first, *rest = messages
    return [{"role": "user", "content": f"{system['content']}\n\n{first['content']}"}, *rest]


def merge_turns(messages: list[dict]) -> list[dict]:
    """Consecutive turns of one role joined by a blank line (templates that want them to
    alternate reject the re-ask reminder as a second user turn otherwise)."""
    merged: list[dict] = []
    for message in messages:
        if merged and merged[-1]["role"] == message["role"]:
            merged[-1] = {**merged[-1], "content": f"{merged[-1]['content']}\n\n"
                                                   f"{message['content']}"}
        else:
            merged.append(dict(message))
    return merged


class LocalJudge:
    """A loaded chat model answering judge prompts one at a time."""

    def __init__(self, model, tokenizer, preset: LocalJudgePreset, max_invalid_retries: int,
                 protocol: JudgeProtocol = AMULET):
        from DecodingMethodsModels.models.loading import eos_token_ids, pad_token_id
        from DecodingMethodsModels.prompts.amulet import template_accepts_system

        self.model = model
        self.tokenizer = tokenizer
        self.preset = preset
        self.max_invalid_retries = max_invalid_retries
        self.protocol = protocol
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad_id = pad_token_id(tokenizer, self.eos_ids)
        self.system_role = template_accepts_system(tokenizer)
        self.context = getattr(model.config, "max_position_embeddings", None)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The templated conversation with the assistant header, as token ids."""
        if not self.system_role:
            messages = fold_system(messages)
        try:
            text = self._template(messages)
        except Exception:  # a template that raises on two user turns in a row
            merged = merge_turns(messages)
            if merged == messages:
                raise
            text = self._template(merged)
        # the template writes any BOS it wants; adding special tokens again would double it
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _template(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)

    def complete(self, messages: list[dict], reask: int = 0) -> str:
        """The judge's greedy answer to ``messages`` (``reask`` changes nothing greedy)."""
        import torch
        from transformers import GenerationConfig

        from DecodingMethodsModels.pipeline.methods import cut_at_eos, neutral_generation_config

        prompt = self.prompt_ids(messages)
        if self.context is not None and len(prompt) + self.preset.max_tokens > self.context:
            raise EvalError(
                f"a judge prompt of {len(prompt)} tokens (+ {self.preset.max_tokens} to answer) "
                f"exceeds {self.preset.model}'s context of {self.context} tokens; a judge "
                "with a longer context is needed"
            )
        ids = torch.tensor([prompt], device=self.model.device)
        config = GenerationConfig(
            max_new_tokens=self.preset.max_tokens, do_sample=False, num_beams=1,
            eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
        )
        with torch.inference_mode(), neutral_generation_config(self.model):
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      generation_config=config)
        new = cut_at_eos(out[0, ids.shape[1]:].tolist(), self.eos_ids)
        return self.tokenizer.decode(new, skip_special_tokens=True)

    def ask(self, messages: list[dict]) -> dict:
        """One comparison's answer record, as :func:`evals.judge.judge_client.ask_judge`
        gives it."""
        answer = ask_until_parsed(self.complete, messages, self.max_invalid_retries,
                                  self.protocol)
        return {**answer, "api_retries": 0}


def load_local_judge(name: str, device: str, preset: LocalJudgePreset,
                     max_invalid_retries: int, trust_remote_code: bool = False,
                     protocol: JudgeProtocol = AMULET) -> LocalJudge:
    """Load ``name`` (embedded model, .gguf, directory or hub id) as a judge."""
    from DecodingMethodsModels.models.loading import load_model, load_tokenizer, resolve_device

    source = _source(name)
    try:
        resolved = resolve_device(device)
        tokenizer = load_tokenizer(source, trust_remote_code)
        model = load_model(source, resolved, preset.dtype, trust_remote_code=trust_remote_code)
    except UserError as exc:
        raise EvalError(f"judge model: {exc}") from None
    return LocalJudge(model, tokenizer, preset, max_invalid_retries, protocol)
