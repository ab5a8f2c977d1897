"""Loading a reward model and scoring conversations with it: chat template, right padding, heads.

Conversation (as the paper's rm_evals): user turn ``question + " " + preference`` (or the
prompt :mod:`evals.scoring.scoring_inputs` chooses), assistant turn ``response``, rendered by the
RM's own chat template and tokenised without adding special tokens again (the template
already holds BOS: no double BOS). A model whose tokenizer has no chat template (the GPT-2
reward models trained on Anthropic HH-RLHF, a BERT-style classifier) reads the HH-RLHF text
``"\n\nHuman: {prompt}\n\nAssistant: {response}"`` tokenised with the tokenizer's own
special tokens (e.g. BERT's ``[CLS]``/``[SEP]``). Rows are
right-padded with the model's pad id, because ArmoRM reads its reward one position before
the first pad id, and transformers' ``*ForSequenceClassification`` read it at the last
non-pad token; with right padding both are the last real token of every row. A row that
contains the pad id itself is scored alone, unpadded, so no rule can misread it.
Nothing is ever truncated: a conversation longer than the model's context is reported.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from evals.errors import EvalError

ARMORM_DEFAULT = "RLHFlow/ArmoRM-Llama3-8B-v0.1"
ARMORM_HEADS = (
    "helpsteer-helpfulness", "helpsteer-correctness", "helpsteer-coherence",
    "helpsteer-complexity", "helpsteer-verbosity", "ultrafeedback-overall_score",
    "ultrafeedback-instruction_following", "ultrafeedback-truthfulness", "ultrafeedback-honesty",
    "ultrafeedback-helpfulness", "beavertails-is_safe", "prometheus-score",
    "argilla-overall_quality", "argilla-judge_lm", "code-complexity", "code-style",
    "code-explanation", "code-instruction-following", "code-readability",
)
_HUGE = 10**9  # tokenizers report "no limit" as ~1e30


@dataclass
class RewardModel:
    """A loaded reward model and what scoring needs to know about it."""

    name: str
    tokenizer: Any
    model: Any | None  # loaded on first use: a fully cached run never loads weights
    loader: Callable[[], Any] | None
    implementation: str  # "armorm-native", "transformers" or "remote-code"
    pad_id: int | None
    max_length: int
    dtype: str
    input_format: str = "chat_template"  # or "hh_text" (see the module doc)
    config: dict | None = None  # the raw config.json
    # scores a batch of id lists instead of the classifier's forward (the loglik scorer)
    rows_scorer: Callable[[RewardModel, Sequence[Sequence[int]]], list[dict]] | None = None

    def ensure_model(self) -> Any:
        """Load the weights now if they are not loaded yet."""
        if self.model is None:
            self.model = self.loader()
        return self.model


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def check_fetchable(name: str) -> None:
    """Offline, a hub id that is not in the local cache fails now, in seconds, instead of
    after a minute of retries (a local directory is left to the loaders)."""
    from pathlib import Path

    from DecodingMethodsModels.models.hub import offline_and_not_cached

    missing = None if Path(name).expanduser().exists() else offline_and_not_cached(name)
    if missing:
        raise EvalError(f"cannot load reward model {name!r}: not a local directory, and {missing}")


def read_config_dict(name: str, trust_remote_code: bool) -> dict:
    """The raw ``config.json`` of a hub id or local directory, without building any class."""
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(name)
    except (OSError, ValueError) as exc:
        from DecodingMethodsModels.models.hub import offline_reason

        reason = offline_reason()
        offline = f"; offline: {reason}" if reason else ""
        raise EvalError(
            f"cannot load reward model {name!r}: not a local directory with a config.json nor "
            f"reachable on the hub ({_first_line(exc)}{offline})"
        ) from None
    return config


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` if available, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvalError(f"--device {device}: CUDA is not available on this machine")
    return device


def resolve_dtype(dtype: str, device: str):
    """``auto`` -> bfloat16 on CUDA (ArmoRM's published dtype), float32 on CPU."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in choices:
        raise EvalError(f"--dtype {dtype!r}: choose one of auto, {', '.join(choices)}")
    return choices[dtype]


def _load_weights(name: str, config: dict, trust_remote_code: bool, device: str, dtype):
    from transformers import AutoModelForSequenceClassification

    from evals.scoring.armorm import ARMORM_ARCHITECTURES, ArmoRMForScoring

    architectures = config.get("architectures") or []
    is_armorm = any(a in ARMORM_ARCHITECTURES for a in architectures)
    try:
        if is_armorm and not trust_remote_code:
            model, info = ArmoRMForScoring.from_pretrained(
                name, dtype=dtype, output_loading_info=True
            )
            missing = [k for k in info.get("missing_keys", []) if "reward_transform" not in k]
            if missing:
                raise EvalError(f"{name}: weights missing from the checkpoint: {missing[:4]}")
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                name, dtype=dtype, trust_remote_code=trust_remote_code
            )
    except ImportError as exc:
        hint = (
            "; drop --trust_remote_code to use the built-in ArmoRM implementation"
            if is_armorm else ""
        )
        raise EvalError(f"the remote code of {name} does not import: {exc}{hint}") from None
    except (OSError, ValueError) as exc:
        raise EvalError(f"cannot load reward model {name}: {_first_line(exc)}") from None
    return model.to(device).eval()


def load_reward_model(
    name: str,
    trust_remote_code: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    max_length: int | None = None,
) -> RewardModel:
    """Read the config and tokenizer now; the weights on first :meth:`RewardModel.ensure_model`.

    ArmoRM (``LlamaForRewardModelWithGating``) runs on :mod:`evals.scoring.armorm` unless
    ``trust_remote_code`` asks for the hub's own code. Any other model with custom code
    (``auto_map``) needs ``trust_remote_code``; plain ``*ForSequenceClassification``
    models load with transformers' classes and are read through their first logit.
    """
    from evals.scoring.armorm import ARMORM_ARCHITECTURES

    check_fetchable(name)
    config = read_config_dict(name, trust_remote_code)
    is_armorm = any(a in ARMORM_ARCHITECTURES for a in config.get("architectures") or [])
    if config.get("auto_map") and not trust_remote_code and not is_armorm:
        raise EvalError(
            f"{name} ships its own modeling code (auto_map: {sorted(config['auto_map'])}); "
            "rerun with --trust_remote_code if you trust it"
        )
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise EvalError(f"cannot load the tokenizer of {name}: {_first_line(exc)}") from None
    input_format = "chat_template" if getattr(tokenizer, "chat_template", None) else "hh_text"
    pad_id = config.get("pad_token_id")
    if pad_id is None:
        pad_id = tokenizer.pad_token_id
    limits = [max_length, config.get("max_position_embeddings"), config.get("n_positions"),
              tokenizer.model_max_length]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < _HUGE]
    if not limits:
        raise EvalError(f"cannot tell the context length of {name}: pass --max_length")
    if max_length is not None and max_length <= 0:
        raise EvalError(f"--max_length must be positive, got {max_length}")
    implementation = (
        "armorm-native" if is_armorm and not trust_remote_code
        else "remote-code" if config.get("auto_map") else "transformers"
    )

    def loader():
        model = _load_weights(name, config, trust_remote_code, device, torch_dtype)
        if model.config.pad_token_id is None and pad_id is not None and implementation != (
            "remote-code"
        ):
            model.config.pad_token_id = pad_id  # the model must know the pad id we pad with
        return model

    return RewardModel(
        name=name, tokenizer=tokenizer, model=None, loader=loader,
        implementation=implementation, pad_id=pad_id, max_length=min(limits),
        dtype=str(torch_dtype).removeprefix("torch."), input_format=input_format, config=config,
    )


def message_ids(tokenizer: Any, messages: list[dict]) -> list[int]:
    """Token ids of chat ``messages`` rendered with the tokenizer's chat template, then
    tokenised with ``add_special_tokens=False`` because the template already writes BOS."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def chat_ids(tokenizer: Any, prompt: str, response: str) -> list[int]:
    """:func:`message_ids` of ``[user: prompt, assistant: response]``."""
    return message_ids(tokenizer, [{"role": "user", "content": prompt},
                                   {"role": "assistant", "content": response}])


def conversation_ids(tokenizer: Any, question: str, preference: str, response: str) -> list[int]:
    """Amulet's conversation: :func:`chat_ids` with the prompt ``question + " " + preference``."""
    return chat_ids(tokenizer, f"{question} {preference}", response)


HH_TEXT = "\n\nHuman: {prompt}\n\nAssistant: {response}"


def scoring_ids(rm: RewardModel, prompt: str, response: str) -> list[int]:
    """Token ids a scorer reads for ``[user: prompt, assistant: response]``: :func:`chat_ids`,
    or for a model without a chat template the HH-RLHF text with the tokenizer's own special
    tokens. A prompt that is already an HH dialogue (ARGS's prompts) is not wrapped again:
    the scorer reads ``prompt + " " + response`` (its turns as chat messages under a chat
    template)."""
    from evals.scoring.public_scoring import hh_dialogue_messages, is_hh_dialogue

    dialogue = is_hh_dialogue(prompt)
    if rm.input_format == "chat_template":
        if not dialogue:
            return chat_ids(rm.tokenizer, prompt, response)
        turns = [*hh_dialogue_messages(prompt), {"role": "assistant", "content": response}]
        return message_ids(rm.tokenizer, turns)
    if dialogue:
        text = f"{prompt.rstrip()} {response}"
    else:
        text = HH_TEXT.format(prompt=prompt, response=response)
    return list(rm.tokenizer(text, add_special_tokens=True)["input_ids"])


def score_key(rm: RewardModel, ids: Sequence[int]) -> str:
    """Cache key: model name, implementation, dtype and the exact token ids scored."""
    payload = json.dumps([rm.name, rm.implementation, rm.dtype, list(ids)])
    return hashlib.sha256(payload.encode()).hexdigest()


def plan_batches(
    id_lists: Sequence[Sequence[int]], pad_id: int | None, batch_size: int
) -> list[list[int]]:
    """Group row numbers into batches: longest first; rows holding the pad id go alone.

    >>> plan_batches([[1, 2], [1, 2, 3], [9, 1], [4]], pad_id=9, batch_size=2)
    [[1, 0], [3], [2]]
    """
    alone = [k for k, ids in enumerate(id_lists) if pad_id is None or pad_id in ids]
    skip = set(alone)
    together = sorted(
        (k for k in range(len(id_lists)) if k not in skip), key=lambda k: -len(id_lists[k])
    )
    batches = [together[s:s + batch_size] for s in range(0, len(together), batch_size)]
    return batches + [[k] for k in alone]


def right_pad(id_lists: Sequence[Sequence[int]], pad_id: int | None):
    """``(input_ids, attention_mask)``, both ``(B, L)``, real tokens first then ``pad_id``."""
    import torch

    length = max(len(ids) for ids in id_lists)
    if pad_id is None and any(len(ids) != length for ids in id_lists):
        raise ValueError("rows of different lengths need a pad id")
    filler = 0 if pad_id is None else pad_id
    input_ids = torch.full((len(id_lists), length), filler, dtype=torch.long)
    mask = torch.zeros((len(id_lists), length), dtype=torch.long)
    for row, ids in enumerate(id_lists):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return input_ids, mask


def read_outputs(output: Any) -> list[dict]:
    """Per row: ``{"rewards": [K floats], "score": float}`` for multi-head (ArmoRM-like)
    outputs, else ``{"logits": [C floats]}`` (upcast to float32 first)."""
    rewards = getattr(output, "rewards", None)
    if rewards is not None:
        rewards = rewards.float().cpu()
        score = getattr(output, "score", None)
        score = score.float().reshape(-1).cpu() if score is not None else None
        return [
            {"rewards": rewards[b].tolist(), "score": None if score is None else float(score[b])}
            for b in range(rewards.shape[0])
        ]
    logits = output.logits.float().cpu()
    return [{"logits": logits[b].reshape(-1).tolist()} for b in range(logits.shape[0])]


def score_rows(rm: RewardModel, id_lists: Sequence[Sequence[int]]) -> list[dict]:
    """Score one batch of conversations (right-padded); returns :func:`read_outputs` dicts."""
    import torch

    if rm.rows_scorer is not None:
        return rm.rows_scorer(rm, id_lists)
    model = rm.ensure_model()
    input_ids, mask = right_pad(id_lists, rm.pad_id)
    device = next(model.parameters()).device
    with torch.inference_mode():
        output = model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
    return read_outputs(output)
