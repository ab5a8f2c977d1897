"""Reward-guided decoding, cached and batched (ARGS and PAD; package README: Reward-guided
decoding).

Per step, `z` = the decoding model's raw next-token logits at the last position (fp32) and the
candidates are the top-k ids of `z`. A guide scores the k candidates and a pure rule turns
(z_k, guide values) into scores over the k candidates; the token is their argmax (mode
"greedy") or a draw from softmax(score / sample_temp) (mode "topk").

- ARGS: the guide is a sequence-classification reward model (one label) reading
  [prompt, tokens so far, candidate i]; `score = z_k + w r_k`. Its KV cache holds k rows per
  question: each step it reads the k candidates as one new token per row (one forward for all
  B k rows, or chunks of whole questions under `rm_batch_size`), then every row of a question
  is replaced by the chosen candidate's row (`DynamicCache.batch_select_indices` with repeated
  indices), so the next step again starts from [prompt, tokens so far] in all k rows.
- PAD: the guide is a causal LM (the PersRM) reading the same ids as the decoding model, with
  its own KV cache advancing one token per step; `u` = its logits at the last position (through
  PAD's value head, `lm_head(W h + b)`, when models/guides.load_persrm found one:
  models/value_head.py)
  and `score = z_k + w (log_softmax_k(u_k) - log_softmax_k(z_k))`. A PersRM with another
  tokenizer takes PAD's second rule instead (retokenized_pad.py, through `retokenizer`).
- implicit PAD: the PersRM is the decoding model itself reading the preference prompt while the
  decoder reads the base prompt; both prompts go through one stacked forward `[base; pref]`.
  With k = V this is Linear Alignment with ratio w - 1.

The pure rules are in rules/guided.py, the settings and checks in guided_settings.py, the
guides and the batch the core loop drives in guides.py; this module holds the entry points.
Rows whose question has ended (any EOS id, unless `ignore_eos`) leave the batch and every
cache. Prompts are left-padded with attention masks and position ids; a prefix shared by all
prompts of a model is encoded once per call and copied into every admission (the engine
core's `SharedPrefix`, engines/core.py).

Continuous batching (`stream_args`, `stream_pad`, `stream_pad_implicit`; greedy only): over
more questions than `batch_size`, the next ones are admitted as soon as rows finish. They are
prefilled in the decoding model and in the guide, and each of their caches is merged into the
running one with the core's `merge_caches` (masked left padding, each row its own positions);
columns no live row attends to are trimmed. A question's tokens do not depend on which
questions shared its batch. Sampled ("topk") decoding draws from one generator for the whole
batch, so its tokens do depend on the batch: it decodes all its questions in one batch.

Cost (evals/rg_bench.py; SmolLM2-135M fp32, 2 CPU threads on a quiet machine, 8 questions,
batch 8, 128 new tokens, greedy, k = 10): pref's `generate` 48 tokens/s, implicit PAD 44,
PAD with a second SmolLM2 as PersRM 27, ARGS with a SmolLM2-sized reward model 15; the
cache-free reference 1.3 tokens/s for PAD and implicit PAD, and 0.21 for ARGS (1 thread, where
the engine's ARGS made 10.6). ARGS pays for its k cache rows per question: each step copies
the reward model's B k row cache once to follow the chosen candidates.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from DecodingMethodsModels.engines.core import DecodeResult, collect, read_logits
from DecodingMethodsModels.engines.guided_settings import (
    GuidedSettings,
    check_generator,
    check_prompts,
    check_reward_model,
    check_topk,
    flight_size,
    vocabulary_size,
)
from DecodingMethodsModels.engines.guides import (
    LanguageModelGuide,
    RewardGuide,
    SeparateModels,
    StackedPrompts,
    prefix_of,
    read_reward,
    stream_guided,
)
from DecodingMethodsModels.engines.retokenized_pad import stream_pad_retokenized
from DecodingMethodsModels.engines.token_ids import check_guide_reads_ids, check_same_tokenizer
from DecodingMethodsModels.models.value_head import warn_if_not_applied
from DecodingMethodsModels.rules.guided import args_scores, pad_scores

__all__ = ["GuidedSettings", "check_same_tokenizer", "decode_args", "decode_pad",
           "decode_pad_implicit", "stream_args", "stream_pad", "stream_pad_implicit"]


def stream_args(model, reward_model, prompt_ids: list[list[int]], settings: GuidedSettings,
                batch_size: int | None = None, generator: torch.Generator | None = None,
                reward_prompt_ids: list[list[int]] | None = None,
                tokenizers=None) -> Iterator[tuple[int, list]]:
    """ARGS over every prompt, at most `batch_size` questions in flight (all by default):
    yields (prompt number, generated ids, the ending EOS included) as each finishes.

    `score = z_k + w r_k` over the top-k candidates. The reward model reads
    `reward_prompt_ids` (default: the same prompts) followed by the tokens so far and each
    candidate. Both models must give the same ids: with `tokenizers` (the decoding model's,
    the reward model's) checked on them and the prompts (token_ids.check_same_tokenizer), else
    on the models' vocabularies and BOS ids (token_ids.check_guide_reads_ids).
    """
    reward_prompt_ids = reward_prompt_ids or prompt_ids
    check_prompts(prompt_ids, reward_prompt_ids)
    vocab = vocabulary_size(model)
    check_topk(settings, vocab)
    check_reward_model(reward_model, vocab)
    check_guide_reads_ids(model, reward_model, "reward model", tokenizers, prompt_ids)
    check_generator(settings, generator)
    flight = flight_size(settings, batch_size, len(prompt_ids))
    decoder_prefix = prefix_of(model, read_logits, prompt_ids, settings)
    reward_prefix = prefix_of(reward_model, read_reward, reward_prompt_ids, settings)

    def newcomers(keys: list[int]) -> SeparateModels:
        guide = RewardGuide(reward_model, [reward_prompt_ids[i] for i in keys], settings,
                            reward_prefix())
        return SeparateModels(model, [prompt_ids[i] for i in keys], guide, settings,
                              decoder_prefix())
    return stream_guided(newcomers, len(prompt_ids), args_scores, settings, generator, flight)


def stream_pad(model, persrm, prompt_ids: list[list[int]], settings: GuidedSettings,
               batch_size: int | None = None, generator: torch.Generator | None = None,
               retokenizer=None, tokenizers=None) -> Iterator[tuple[int, list]]:
    """PAD over every prompt, at most `batch_size` in flight; the PersRM (a causal LM) reads
    the same ids as `model`. `score = z_k + w (log_softmax_k(u_k) - log_softmax_k(z_k))` over
    the top-k candidates of z. Yields (prompt number, generated ids) as each finishes.
    u is whatever `persrm` computes: load it with models/guides.load_persrm (or
    apply models/value_head.attach_value_head) for PAD's value head; a warning says when one is
    left out.

    Both models must give the same ids: with `tokenizers` (the decoding model's, the
    PersRM's) checked on them and the prompts, else on the models' vocabularies and BOS ids
    (token_ids.check_guide_reads_ids); a refusal names PAD's second rule.
    With a `retokenizer` (retokenized_pad.Retokenizer: a PersRM with another tokenizer),
    PAD's second rule instead: the PersRM reads the text so far in its own ids and
    `score = z_k + w (u_mapped(k) - z_k)` on raw logits.
    """
    warn_if_not_applied(persrm)
    if retokenizer is not None:
        return stream_pad_retokenized(model, persrm, retokenizer, prompt_ids, settings,
                                      batch_size, generator)
    check_prompts(prompt_ids)
    vocab = vocabulary_size(model)
    check_topk(settings, vocab)
    vocabulary_size(persrm)  # a UserError without an LM head
    check_guide_reads_ids(model, persrm, "PersRM", tokenizers, prompt_ids)
    check_generator(settings, generator)
    flight = flight_size(settings, batch_size, len(prompt_ids))
    decoder_prefix = prefix_of(model, read_logits, prompt_ids, settings)
    guide_prefix = prefix_of(persrm, read_logits, prompt_ids, settings)

    def newcomers(keys: list[int]) -> SeparateModels:
        prompts = [prompt_ids[i] for i in keys]
        guide = LanguageModelGuide(persrm, prompts, settings, guide_prefix())
        return SeparateModels(model, prompts, guide, settings, decoder_prefix())
    return stream_guided(newcomers, len(prompt_ids), pad_scores, settings, generator, flight)


def stream_pad_implicit(model, base_ids: list[list[int]], pref_ids: list[list[int]],
                        settings: GuidedSettings, batch_size: int | None = None,
                        generator: torch.Generator | None = None) -> Iterator[tuple[int, list]]:
    """Implicit PAD, at most `batch_size` questions in flight: the decoding model reads
    `base_ids`; the same model reading `pref_ids` is the PersRM. Over the candidates, score =
    (1 - w) log p_base + w log p_pref + const; with k = V this is Linear Alignment with ratio
    w - 1. One stacked forward per step. Yields (question number, generated ids).
    """
    check_prompts(base_ids, pref_ids)
    check_topk(settings, vocabulary_size(model))
    check_generator(settings, generator)
    flight = flight_size(settings, batch_size, len(base_ids))
    prefix = prefix_of(model, read_logits, base_ids + pref_ids, settings)

    def newcomers(keys: list[int]) -> StackedPrompts:
        return StackedPrompts(model, [base_ids[i] for i in keys], [pref_ids[i] for i in keys],
                              settings, prefix())
    return stream_guided(newcomers, len(base_ids), pad_scores, settings, generator, flight)


def decode_args(model, reward_model, prompt_ids: list[list[int]], settings: GuidedSettings,
                generator: torch.Generator | None = None,
                reward_prompt_ids: list[list[int]] | None = None,
                batch_size: int | None = None, tokenizers=None) -> DecodeResult:
    """`stream_args` collected in prompt order (by default all prompts in one batch)."""
    return collect(stream_args(model, reward_model, prompt_ids, settings, batch_size,
                                generator, reward_prompt_ids, tokenizers), len(prompt_ids))


def decode_pad(model, persrm, prompt_ids: list[list[int]], settings: GuidedSettings,
               generator: torch.Generator | None = None, batch_size: int | None = None,
               retokenizer=None, tokenizers=None) -> DecodeResult:
    """`stream_pad` collected in prompt order (by default all prompts in one batch)."""
    return collect(stream_pad(model, persrm, prompt_ids, settings, batch_size, generator,
                               retokenizer, tokenizers), len(prompt_ids))


def decode_pad_implicit(model, base_ids: list[list[int]], pref_ids: list[list[int]],
                        settings: GuidedSettings, generator: torch.Generator | None = None,
                        batch_size: int | None = None) -> DecodeResult:
    """`stream_pad_implicit` collected in question order (by default all in one batch)."""
    return collect(stream_pad_implicit(model, base_ids, pref_ids, settings, batch_size,
                                        generator), len(base_ids))


