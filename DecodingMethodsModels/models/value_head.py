"""PAD's value head on the PersRM (the package README: Reward-guided decoding).

PAD.py loads its PersRM through LLaMA-Factory with `add_dpovaluehead=True`: the causal LM's
logits become `lm_head(W h + b)`, with h the last hidden state (after the final norm: what the
LM head reads) and W (H, H), b (H,) a linear layer that starts as the identity. W and b are
`v_head.summary.weight` and `v_head.summary.bias` of `value_head.safetensors` in the checkpoint,
else of `value_head.bin`; with neither file the layer stays the identity, so the PersRM is the
plain LM. `v_head.*` tensors inside the main weights are never read by PAD.py.

`attach_value_head` puts the layer in front of the loaded model's own LM head
(`ValueHeadedLMHead`), so every forward of that model has the head's logits: the engine's cached
steps (with `logits_to_keep`), `PadProcessor`, `generate`. `W h + b` is computed in fp32 (PAD.py:
in the model's dtype); the result goes through the LM head in the model's dtype, as the plain
PersRM's hidden state does.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch

from DecodingMethodsModels.errors import UserError

VALUE_HEAD_FILES = ("value_head.safetensors", "value_head.bin")  # LLaMA-Factory's names, in order
WEIGHT_KEY, BIAS_KEY = "v_head.summary.weight", "v_head.summary.bias"


class ValueHeadedLMHead(torch.nn.Module):
    """`lm_head(W h + b)`: PAD's value head (fp32) in front of a model's own LM head.

    `facts` ({"file", "sha256"}) says where W and b came from. `weight` is the LM head's, so the
    vocabulary size reads as before.
    """

    def __init__(self, lm_head: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor,
                 facts: dict):
        super().__init__()
        self.lm_head = lm_head
        hidden = weight.shape[1]
        self.summary = torch.nn.Linear(hidden, hidden, device=lm_head.weight.device,
                                       dtype=torch.float32)
        with torch.no_grad():
            self.summary.weight.copy_(weight)
            self.summary.bias.copy_(bias)
        self.summary.requires_grad_(False)
        self.facts = dict(facts)

    @property
    def weight(self) -> torch.Tensor:
        return self.lm_head.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        w, b = self.summary.weight, self.summary.bias
        projected = torch.nn.functional.linear(hidden.to(w.device, torch.float32), w.float(),
                                               b.float())
        return self.lm_head(projected.to(self.lm_head.weight.dtype))


def _offline() -> bool:
    from DecodingMethodsModels.models.hub import offline_reason

    return offline_reason() is not None


def _hub_file(repo_id: str, name: str) -> Path | None:
    """`name` in hub repo `repo_id` (downloaded if needed), or None if the repo has none."""
    from huggingface_hub import try_to_load_from_cache
    from transformers.utils import cached_file

    try:
        cached = try_to_load_from_cache(repo_id, name)
    except ValueError:  # not a repo id
        return None
    if isinstance(cached, str):
        return Path(cached)
    if cached is not None:  # the cache knows the repo has no such file
        return None
    if _offline():
        warnings.warn(f"cannot tell whether {repo_id!r} has a value head: {name} is not in the "
                      "local hub cache and the hub cannot be asked; none is applied", stacklevel=3)
        return None
    try:
        found = cached_file(repo_id, name, _raise_exceptions_for_missing_entries=False)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot look for the value head {name} of {repo_id!r}: {first}") from None
    return Path(found) if found else None


def find_value_head(checkpoint: str) -> Path | None:
    """The value-head file PAD.py would read for `checkpoint` (a directory or hub id):
    value_head.safetensors, else value_head.bin; None when it has neither (or is a .gguf)."""
    local = Path(checkpoint).expanduser()
    if local.is_dir():
        return next((local / n for n in VALUE_HEAD_FILES if (local / n).is_file()), None)
    if local.suffix == ".gguf" or local.exists():
        return None
    for name in VALUE_HEAD_FILES:
        found = _hub_file(checkpoint, name)
        if found is not None:
            return found
    return None


def read_value_head(path: Path, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W (hidden, hidden) and b (hidden,) from a value-head file, fp32; a one-line UserError
    naming the file when it cannot be read, lacks a key or holds another shape."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(path)
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot read the value head {path}: {first}") from None
    if not isinstance(tensors, dict):
        raise UserError(f"the value head {path} is not a dict of tensors")
    for key in (WEIGHT_KEY, BIAS_KEY):
        if not torch.is_tensor(tensors.get(key)):
            held = ", ".join(sorted(map(str, tensors))[:4]) or "nothing"
            raise UserError(f"the value head {path} has no {key} (it holds {held}): PAD's value "
                            f"head is {WEIGHT_KEY} ({hidden}, {hidden}) and {BIAS_KEY} ({hidden},)")
    weight, bias = tensors[WEIGHT_KEY], tensors[BIAS_KEY]
    if tuple(weight.shape) != (hidden, hidden) or tuple(bias.shape) != (hidden,):
        scalar = " (a scalar value head, e.g. trl's, not PAD's)" if weight.shape[0] == 1 else ""
        raise UserError(
            f"the value head {path} has {WEIGHT_KEY} {tuple(weight.shape)} and {BIAS_KEY} "
            f"{tuple(bias.shape)}{scalar}: PAD's is ({hidden}, {hidden}) and ({hidden},) for this "
            "PersRM")
    return weight.float(), bias.float()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def attach_value_head(model, checkpoint: str | None = None) -> dict | None:
    """Apply PAD's value head of `checkpoint` (default: the directory or hub id `model` was
    loaded from) to `model` in place, as PAD.py loads its PersRM: afterwards the model's logits
    are `lm_head(W h + b)`. Returns {"file", "sha256"}, or None when the checkpoint has no
    value-head file (the identity: the model is left as it is)."""
    head = model.get_output_embeddings()
    if head is None:
        raise UserError(f"{type(model).__name__} has no LM head: PAD's PersRM is a causal LM")
    if isinstance(head, ValueHeadedLMHead):
        raise UserError("this model already has a value head applied")
    path = find_value_head(str(checkpoint or model.name_or_path))
    if path is None:
        return None
    weight, bias = read_value_head(path, head.weight.shape[1])
    facts = {"file": path.name, "sha256": file_sha256(path)}
    model.set_output_embeddings(ValueHeadedLMHead(head, weight, bias, facts))
    return facts


def value_head_facts(model) -> dict | None:
    """{"file", "sha256"} of the value head applied to `model`, or None."""
    head = model.get_output_embeddings()
    return dict(head.facts) if isinstance(head, ValueHeadedLMHead) else None


def warn_if_not_applied(persrm) -> None:
    """Warn when a PersRM loaded from a local directory has a value-head file next to its
    weights that is not applied (it would decode with another guide than PAD.py's)."""
    if isinstance(persrm.get_output_embeddings(), ValueHeadedLMHead):
        return
    local = Path(str(getattr(persrm, "name_or_path", "") or "")).expanduser()
    if not local.is_dir():
        return
    found = next((n for n in VALUE_HEAD_FILES if (local / n).is_file()), None)
    if found:
        warnings.warn(f"{local} has a value head ({found}) that this PersRM does not apply; "
                      "PAD.py decodes through it: call attach_value_head(persrm) first",
                      stacklevel=3)
