"""Loading the guides of reward-guided decoding: ARGS's reward model and PAD's PersRM.

PAD's PersRM is a causal LM with PAD's value head in front of its LM head, read from
`value_head.safetensors` (else `value_head.bin`) in its checkpoint, as PAD.py loads it
(value_head.py); `v_head.*` tensors inside the main weights are ignored, as PAD.py ignores them.
"""

from __future__ import annotations

import warnings

from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.models.loading import (
    ModelSource,
    _refused,
    _unreachable,
    resolve_dtype,
    resolve_model,
)


def _from_pretrained(auto_class, source: ModelSource, **kwargs):
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    try:
        return auto_class.from_pretrained(source.path, output_loading_info=True, **kwargs)
    except OSError as err:
        raise _unreachable(source, err) from None
    except ValueError as err:
        raise _refused(source, err) from None


def _module_name(model, module) -> str | None:
    return next((name for name, m in model.named_modules() if m is module), None)


def load_persrm(name: str, device: str, dtype: str, trust_remote_code: bool = False):
    """PAD's PersRM in eval mode: a causal LM whose logits are `lm_head(W h + b)` when its
    checkpoint has a value-head file (value_head.attach_value_head; `value_head_facts(model)`
    says which), else the plain LM. A .gguf PersRM has no value head.

    Raises a UserError when the checkpoint has no LM head of its own (e.g. a sequence
    classifier), which loading would otherwise fill with random weights, or when its value-head
    file is unreadable or not PAD's shape.
    """
    from transformers import AutoModelForCausalLM

    from DecodingMethodsModels.models.value_head import VALUE_HEAD_FILES, attach_value_head

    source = resolve_model(name)
    model, info = _from_pretrained(
        AutoModelForCausalLM, source, dtype=resolve_dtype(dtype, device),
        trust_remote_code=trust_remote_code,
    )
    head = _module_name(model, model.get_output_embeddings())
    if head is not None and f"{head}.weight" in info["missing_keys"]:
        raise UserError(
            f"the PersRM {name!r} has no LM head in its checkpoint ({head}.weight is missing): "
            "PAD needs a causal LM"
        )
    applied = None if source.gguf_file else attach_value_head(model, source.path)
    embedded = sorted(k for k in info["unexpected_keys"] if k.startswith("v_head."))
    if embedded and applied is None:
        warnings.warn(f"the PersRM {name!r} holds {', '.join(embedded)} in its main weights but no "
                      f"{' or '.join(VALUE_HEAD_FILES)}: they are ignored, as PAD.py ignores "
                      "them (it reads its value head from those files only)", stacklevel=2)
    return model.to(device).eval()


def load_reward_model(name: str, device: str, dtype: str, trust_remote_code: bool = False):
    """ARGS's reward model: a sequence classifier with one label, in eval mode."""
    from transformers import AutoModelForSequenceClassification

    source = resolve_model(name)
    model, info = _from_pretrained(
        AutoModelForSequenceClassification, source, dtype=resolve_dtype(dtype, device),
        trust_remote_code=trust_remote_code,
    )
    head = _module_name(model, getattr(model, "score", None))
    if head is not None and f"{head}.weight" in info["missing_keys"]:
        raise UserError(
            f"the reward model {name!r} has no reward head in its checkpoint ({head}.weight is "
            "missing): it is not a trained reward model"
        )
    if model.config.num_labels != 1:
        raise UserError(
            f"the reward model {name!r} has {model.config.num_labels} labels: ARGS needs a "
            "sequence classifier with one scalar output (num_labels 1)"
        )
    return model.to(device).eval()


def load_guide_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer saved with a guide model (no chat template needed)."""
    from transformers import AutoTokenizer

    source = resolve_model(name)
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        return AutoTokenizer.from_pretrained(
            source.path, trust_remote_code=trust_remote_code, **kwargs
        )
    except OSError as err:
        raise _unreachable(source, err) from None
    except ValueError as err:
        raise _refused(source, err) from None
