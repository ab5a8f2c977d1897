"""A native implementation of ArmoRM's architecture (``LlamaForRewardModelWithGating``).

Why: the hub repository ``RLHFlow/ArmoRM-Llama3-8B-v0.1`` ships remote code that imports
``LLAMA_INPUTS_DOCSTRING`` from ``transformers.models.llama.modeling_llama``, which
transformers 5 no longer has, so ``trust_remote_code=True`` cannot load it here. This class
has the same parameter names, so ``from_pretrained`` reads the published weights as they are,
and the same forward semantics:

- ``rewards = regression_layer(h[b, p_b])`` with ``p_b`` the position *before the first pad
  id* of row b (the last position when a row has no pad), shape ``(B, num_objectives)``;
- gating: ``g = softmax(MLP(h[b, s_b]) / temperature) * logit_scale`` where ``s_b`` is the
  start of the *last* occurrence of ``gating_token_pattern`` (Llama-3's
  ``<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n``) in row b;
- ``score = sum_k g[b, k] * (rewards @ reward_transform_matrix)[b, k]``, shape ``(B,)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlamaModel, LlamaPreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

ARMORM_ARCHITECTURE = "LlamaForRewardModelWithGating"
# The hub's class name, and this class's name as save_pretrained records it.
ARMORM_ARCHITECTURES = (ARMORM_ARCHITECTURE, "ArmoRMForScoring")
# tokenizer.encode("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n") for Llama 3.
LLAMA3_GATING_PATTERN = (128009, 128006, 78191, 128007, 271)


@dataclass
class ArmoRMOutput(ModelOutput):
    """``rewards (B, K)``, gated ``score (B,)``, ``logits`` (= score), ``gating_output (B, K)``."""

    rewards: torch.FloatTensor | None = None
    score: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    gating_output: torch.FloatTensor | None = None


class GatingNetwork(nn.Module):
    """``n_hidden`` ReLU layers then a linear map; softmax(x / temperature) * logit_scale."""

    def __init__(self, in_features: int, out_features: int, temperature: float,
                 hidden_dim: int, n_hidden: int) -> None:
        super().__init__()
        self.temperature = temperature
        self.logit_scale = nn.Parameter(torch.ones(1))
        sizes = [in_features] + [hidden_dim] * n_hidden + [out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, K)
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        x = self.layers[-1](x)
        return torch.softmax(x / self.temperature, dim=1) * self.logit_scale[0]


def last_pattern_start(ids: list[int], pattern: tuple[int, ...]) -> int:
    """Start of the last occurrence of ``pattern`` in ``ids``; ``ValueError`` if absent.

    >>> last_pattern_start([5, 1, 2, 7, 1, 2], (1, 2))
    4
    """
    for start in range(len(ids) - len(pattern), -1, -1):
        if tuple(ids[start:start + len(pattern)]) == pattern:
            return start
    raise ValueError(
        f"the assistant header token pattern {list(pattern)} is not in the conversation: "
        "ArmoRM needs its Llama-3 chat template and the full assistant header"
    )


def first_pad_minus_one(input_ids: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """``(B,)`` reward positions: one before the first ``pad_id``, else the last position.

    ``(argmax(ids == pad) - 1) mod L``: ``argmax`` is 0 when a row has no pad, giving L-1.
    """
    length = input_ids.shape[1]
    if pad_id is None:
        return torch.full((input_ids.shape[0],), length - 1, device=input_ids.device)
    return (input_ids.eq(pad_id).int().argmax(dim=-1) - 1) % length


class ArmoRMForScoring(LlamaPreTrainedModel):
    """ArmoRM: Llama backbone, 19 regression heads and a prompt-conditioned gate."""

    def __init__(self, config) -> None:
        super().__init__(config)
        extra = config.to_dict()
        objectives = extra.get("num_objectives", 19)
        self.model = LlamaModel(config)
        self.regression_layer = nn.Linear(config.hidden_size, objectives, bias=False)
        # A fixed linear map of the heads, loaded from the checkpoint (not trained).
        self.reward_transform_matrix = nn.Parameter(torch.eye(objectives), requires_grad=False)
        self.gating = GatingNetwork(
            config.hidden_size, objectives,
            temperature=extra.get("gating_temperature", 10),
            hidden_dim=extra.get("gating_hidden_dim", 1024),
            n_hidden=extra.get("gating_n_hidden", 3),
        )
        self.gating_pattern = tuple(extra.get("gating_token_pattern", LLAMA3_GATING_PATTERN))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Llama's init, plus the two bare parameters (only where no weight was loaded)."""
        super()._init_weights(module)
        if isinstance(module, ArmoRMForScoring):
            init.eye_(module.reward_transform_matrix)
        elif isinstance(module, GatingNetwork):
            init.ones_(module.logit_scale)

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                **kwargs) -> ArmoRMOutput:
        hidden = self.model(input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        rows = torch.arange(input_ids.shape[0], device=hidden.device)
        positions = first_pad_minus_one(input_ids, self.config.pad_token_id).to(hidden.device)
        rewards = self.regression_layer(hidden[rows, positions])  # (B, K)
        gate_at = [last_pattern_start(row.tolist(), self.gating_pattern) for row in input_ids]
        gate = self.gating(hidden[rows, torch.tensor(gate_at, device=hidden.device)])  # (B, K)
        score = (gate * (rewards @ self.reward_transform_matrix)).sum(dim=1)  # (B,)
        return ArmoRMOutput(rewards=rewards, score=score, logits=score, gating_output=gate)
