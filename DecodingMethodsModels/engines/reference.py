"""The definition of reward-guided decoding, with nothing clever: one question at a time, and
at every step every model re-reads the whole sequence from scratch (no cache, no padding, no
batch of questions). The public ARGS and PAD codes work this way, minus their bugs.

It is the reference the cached, batched engine (reward_guided.py) is tested against, and the
baseline of its speed benchmark. It shares only the pure rules and settings with the engine.
"""

from __future__ import annotations

import logging

import torch

from DecodingMethodsModels.engines.core import model_input_device
from DecodingMethodsModels.engines.reward_guided import GuidedSettings
from DecodingMethodsModels.rules.guided import (
    ScoreRule,
    args_scores,
    choose_candidates,
    pad_retokenized_scores,
    pad_scores,
)


def _next_logits(model, ids: list[int]) -> torch.Tensor:
    """A causal LM's raw logits for the token after `ids`, fp32 (1, V)."""
    out = model(input_ids=torch.tensor([ids], device=model_input_device(model)), use_cache=False)
    return out.logits[:, -1, :].float()


def _rewards(reward_model, sequences: list[list[int]]) -> torch.Tensor:
    """The classifier's scalar for each whole sequence (all of one length), fp32 (1, k).

    Embeddings rather than ids go in, so that transformers reads the score at the last position
    even when the last id is the pad id (its pooling skips pad ids; the one warning it logs
    about that is silenced). Without a pad id transformers refuses batches: one row at a time.
    """
    ids = torch.tensor(sequences, device=model_input_device(reward_model))  # (k, L)
    embeddings = reward_model.get_input_embeddings()(ids)  # (k, L, H)
    batches = [embeddings]
    if reward_model.config.get_text_config().pad_token_id is None:
        batches = list(embeddings.split(1))
    layers_logger = logging.getLogger("transformers.modeling_layers")
    level = layers_logger.level
    layers_logger.setLevel(logging.ERROR)
    try:
        scores = [reward_model(inputs_embeds=b, use_cache=False).logits for b in batches]
    finally:
        layers_logger.setLevel(level)
    return torch.cat(scores)[:, 0].float().unsqueeze(0)


def _decode_one(next_logits, guide_values, rule: ScoreRule, settings: GuidedSettings,
                generator: torch.Generator | None) -> list[int]:
    """One question: `next_logits(generated)` gives z (1, V), `guide_values(generated,
    candidates)` the guide's (1, k) values for the candidate ids (k,)."""
    generated: list[int] = []
    for _ in range(settings.max_new_tokens):
        z = next_logits(generated)
        candidate_logits, candidates = torch.topk(z, settings.topk, dim=-1)  # (1, k)
        values = guide_values(generated, candidates[0].tolist())
        scores = rule(candidate_logits, values.to(z.device), settings.weight)
        choice = choose_candidates(scores, settings.mode, settings.sample_temp, generator)
        generated.append(int(candidates[0, int(choice[0])]))
        if not settings.ignore_eos and generated[-1] in settings.eos_ids:
            break
    return generated


@torch.inference_mode()
def reference_args(model, reward_model, prompt_ids: list[list[int]], settings: GuidedSettings,
                   generator: torch.Generator | None = None) -> list[list[int]]:
    """ARGS by its definition; the reward model reads [prompt, generated, candidate]."""
    outputs = []
    for prompt in prompt_ids:
        def rewards(generated, candidates, prompt=prompt):
            return _rewards(reward_model, [prompt + generated + [c] for c in candidates])

        outputs.append(_decode_one(lambda g, p=prompt: _next_logits(model, p + g), rewards,
                                   args_scores, settings, generator))
    return outputs


@torch.inference_mode()
def reference_pad(model, persrm, prompt_ids: list[list[int]], settings: GuidedSettings,
                  generator: torch.Generator | None = None) -> list[list[int]]:
    """PAD by its definition; the PersRM reads the same ids as the decoding model."""
    outputs = []
    for prompt in prompt_ids:
        def guide(generated, candidates, prompt=prompt):
            return _next_logits(persrm, prompt + generated)[:, candidates]

        outputs.append(_decode_one(lambda g, p=prompt: _next_logits(model, p + g), guide,
                                   pad_scores, settings, generator))
    return outputs


@torch.inference_mode()
def reference_pad_retokenized(model, persrm, tokenizer, persrm_tokenizer,
                              prompt_ids: list[list[int]], settings: GuidedSettings,
                              generator: torch.Generator | None = None) -> list[list[int]]:
    """PAD's second rule by its definition (a PersRM with another tokenizer): every step the
    prompt and tokens so far are decoded to text (special tokens skipped), encoded by the
    PersRM's tokenizer (its special tokens added) and read from scratch; candidate c stands for
    the PersRM's first id of `decode([c])` ("" read as " ")."""
    def persrm_id(token: int) -> int:
        text = tokenizer.decode([token], skip_special_tokens=False)
        return persrm_tokenizer.encode(text or " ", add_special_tokens=False)[0]

    outputs = []
    for prompt in prompt_ids:
        def guide(generated, candidates, prompt=prompt):
            text = tokenizer.decode(prompt + generated, skip_special_tokens=True)
            ids = persrm_tokenizer.encode(text, add_special_tokens=True)
            return _next_logits(persrm, ids)[:, [persrm_id(c) for c in candidates]]

        outputs.append(_decode_one(lambda g, p=prompt: _next_logits(model, p + g), guide,
                                   pad_retokenized_scores, settings, generator))
    return outputs


@torch.inference_mode()
def reference_pad_implicit(model, base_ids: list[list[int]], pref_ids: list[list[int]],
                           settings: GuidedSettings,
                           generator: torch.Generator | None = None) -> list[list[int]]:
    """Implicit PAD by its definition: the model on the base prompt decodes, the same model on
    the preference prompt is the PersRM."""
    outputs = []
    for base, pref in zip(base_ids, pref_ids, strict=True):
        def guide(generated, candidates, pref=pref):
            return _next_logits(model, pref + generated)[:, candidates]

        outputs.append(_decode_one(lambda g, b=base: _next_logits(model, b + g), guide,
                                   pad_scores, settings, generator))
    return outputs
