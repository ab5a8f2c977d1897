"""Loading the guides of reward-guided decoding: ARGS's reward model and PAD's PersRM.

The released PersRM (RuizheChen/PAD) is a causal LM saved together with a value head: its
checkpoint holds extra tensors such as `v_head.summary.weight`. It loads as a plain causal LM;
the value-head tensors are left unused (PAD decodes with the LM head only).
"""

from __future__ import annotations

from .errors import UserError
from .loading import ModelSource, _refused, _unreachable, resolve_dtype, resolve_model


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
    """PAD's PersRM as a causal LM in eval mode; value-head tensors in the checkpoint are ignored.

    Raises a UserError when the checkpoint has no LM head of its own (e.g. a sequence
    classifier), which loading would otherwise fill with random weights.
    """
    from transformers import AutoModelForCausalLM

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
