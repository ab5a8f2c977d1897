"""CoSteer's small model (SLM) in a CLI run: its tokenizer checked against the decoding
model's before any weight loads, then the SLM loaded on its own device. `--slm_name` unset
(or the decoding model's own name) means the decoding model steers itself: nothing loads."""

from __future__ import annotations

from DecodingMethodsModels.errors import UserError


def separate_slm(config) -> str | None:
    """The SLM's name when costeer runs with a model other than the decoding one, else None."""
    if "costeer" not in config.methods or config.slm_name in (None, config.model_name):
        return None
    return config.slm_name


def check_slm_tokenizer(config, tokenizer) -> None:
    """CoSteer adds the SLM's log-probs to the LLM's token by token: both must map every token
    to the same id. Another tokenizer is refused in one line, on the tokenizers alone."""
    from DecodingMethodsModels.engines.token_ids import check_same_tokenizer
    from DecodingMethodsModels.models.guides import load_guide_tokenizer

    name = separate_slm(config)
    if name is None:
        return
    try:
        check_same_tokenizer(tokenizer, load_guide_tokenizer(name, config.trust_remote_code),
                             "SLM")
    except UserError as err:
        raise UserError(f"{err} (--slm_name {name}: CoSteer combines the two models' "
                        "log-probs token by token)") from None


def slm_context(config) -> int | None:
    """The SLM's context length from its configuration (None: unknown, or no separate SLM)."""
    from DecodingMethodsModels.models.loading import resolve_model
    from DecodingMethodsModels.pipeline.encode import configured_context

    name = separate_slm(config)
    return None if name is None else configured_context(resolve_model(name),
                                                         config.trust_remote_code)


def load_slm(config, process, decoding_device: str, tokenizer) -> tuple[object | None, dict]:
    """(the SLM, its sidecar facts); the SLM is None when the decoding model steers itself."""
    from DecodingMethodsModels.models.loading import load_model, resolve_device, resolve_model
    from DecodingMethodsModels.pipeline.distributed import rank_device

    name = separate_slm(config)
    if name is None:
        return None, ({"costeer": {"slm": None}} if "costeer" in config.methods else {})
    device = decoding_device if config.slm_device is None else rank_device(
        resolve_device(config.slm_device), process, False)
    slm = load_model(resolve_model(name), device, config.dtype, False, config.trust_remote_code)
    vocab = slm.get_output_embeddings().weight.shape[0]
    if vocab < len(tokenizer):
        raise UserError(f"the SLM {name!r} scores {vocab} token ids but the tokenizer has "
                        f"{len(tokenizer)}: CoSteer needs an SLM over the same vocabulary")
    return slm, {"costeer": {"slm": name, "slm_device": device,
                             "slm_dtype": str(slm.dtype).removeprefix("torch.")}}
