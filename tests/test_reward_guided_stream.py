"""Continuous batching in the reward-guided engine (stream_args, stream_pad,
stream_pad_implicit): with fewer slots than questions of very different lengths, each question
gets the tokens it gets alone (batch 1, fp32), and a question is admitted as soon as a slot
frees. Models and prompts come from test_reward_guided.py and test_engine.py."""

from __future__ import annotations

import pytest
import torch
from test_engine import MANY_QUESTIONS, fixed_batch_finish_order, varied_stops
from test_reward_guided import FAMILIES, METHODS, Zoo, settings

from DecodingMethodsModels.engines import core
from DecodingMethodsModels.engines.reward_guided import (
    decode_args,
    decode_pad,
    stream_args,
    stream_pad,
    stream_pad_implicit,
)
from DecodingMethodsModels.prompts.amulet import encode_prompt, preference_sentence

STEPS = 16

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def zoo(smol_tokenizer_dir) -> Zoo:
    from transformers import AutoTokenizer

    return Zoo(len(AutoTokenizer.from_pretrained(smol_tokenizer_dir)))


@pytest.fixture(scope="module")
def many_prompts(smol_tokenizer_dir) -> tuple[list[list[int]], list[list[int]]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    sentence = preference_sentence("creative")
    return ([encode_prompt(tokenizer, q, sentence, True) for q in MANY_QUESTIONS],
            [encode_prompt(tokenizer, q, "", True) for q in MANY_QUESTIONS])


def stream(zoo, prompts, method, family, config, batch_size, generator=None):
    pref, base = prompts
    model = zoo.decoder(family, 0)
    if method == "args":
        return stream_args(model, zoo.reward_model(0), pref, config, batch_size, generator)
    if method == "pad":
        return stream_pad(model, zoo.persrm(0), pref, config, batch_size, generator)
    return stream_pad_implicit(model, base, pref, config, batch_size, generator)


def in_order(pairs) -> list[list[int]]:
    found = dict(pairs)
    return [found[i] for i in range(len(found))]


def alone_and_stops(zoo, prompts, method, family, **changes):
    """EOS ids that end the questions at different steps, and each question decoded alone."""
    unstopped = in_order(stream(zoo, prompts, method, family,
                                settings(method, max_new_tokens=STEPS, **changes), None))
    eos_ids = varied_stops(unstopped)
    config = settings(method, eos_ids=eos_ids, max_new_tokens=STEPS, **changes)
    alone = [in_order(stream(zoo, ([p], [b]), method, family, config, 1))[0]
             for p, b in zip(*prompts, strict=True)]
    assert len({len(row) for row in alone}) >= 3  # questions end at different steps
    return config, alone


def continuous_finish_order(lengths: list[int], slots: int) -> list[int]:
    """When each question ends if freed slots are refilled before the next token is chosen:
    every step, each live row (admission order) gets one token, a newcomer its first from its
    prefill."""
    waiting, live, made, order = list(range(len(lengths))), [], {}, []
    while waiting or live:
        newcomers, waiting = waiting[: slots - len(live)], waiting[slots - len(live):]
        live += newcomers
        made.update(dict.fromkeys(newcomers, 0))
        for q in live:
            made[q] += 1
        order += [q for q in live if made[q] == lengths[q]]
        live = [q for q in live if made[q] < lengths[q]]
    return order


def long_short_interleaved(alone: list[list[int]]) -> list[int]:
    by_length = sorted(range(len(alone)), key=lambda i: len(alone[i]))
    pairs = [q for pair in zip(by_length[::-1], by_length, strict=True) for q in pair]
    return list(dict.fromkeys(pairs))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_continuous_batching_gives_each_question_its_batch_one_tokens(
    zoo, many_prompts, method, family
):
    config, alone = alone_and_stops(zoo, many_prompts, method, family)
    order_in = long_short_interleaved(alone)
    lengths = [len(alone[q]) for q in order_in]
    expected = continuous_finish_order(lengths, 3)
    assert expected != fixed_batch_finish_order(lengths, 3)  # the data shows it
    pref, base = many_prompts
    reordered = ([pref[q] for q in order_in], [base[q] for q in order_in])
    order, got = [], {}
    for key, tokens in stream(zoo, reordered, method, family, config, 3):
        order.append(key)
        got[order_in[key]] = tokens
    assert [got[i] for i in range(len(alone))] == alone
    assert order == expected  # each admitted as soon as a slot freed


@pytest.mark.parametrize("rm_batch_size", [10, 20, 1000])
def test_args_reward_model_groups_under_admission_keep_batch_one_tokens(
    zoo, many_prompts, rm_batch_size
):
    config, alone = alone_and_stops(zoo, many_prompts, "args", "llama",
                                    rm_batch_size=rm_batch_size)
    got = decode_args(zoo.decoder("llama", 0), zoo.reward_model(0), many_prompts[0], config,
                      batch_size=3)
    assert got.token_ids == alone


def test_the_collected_stream_counts_fewer_steps_than_fixed_batches(zoo, many_prompts):
    config, alone = alone_and_stops(zoo, many_prompts, "pad", "llama")
    model, persrm, pref = zoo.decoder("llama", 0), zoo.persrm(0), many_prompts[0]
    continuous = decode_pad(model, persrm, pref, config, batch_size=3)
    fixed = [decode_pad(model, persrm, pref[i:i + 3], config) for i in range(0, len(pref), 3)]
    assert continuous.token_ids == alone
    assert [ids for batch in fixed for ids in batch.token_ids] == alone
    assert continuous.steps < sum(batch.steps for batch in fixed)


@pytest.mark.parametrize("method", METHODS)
def test_merged_caches_are_trimmed_to_the_columns_live_rows_attend_to(
    zoo, many_prompts, method, monkeypatch
):
    first_column_used, widths, models = [], [], set()
    original, drop = core.trim_columns, core.CachedRows.drop

    def recording(cache, mask):
        mask = original(cache, mask)
        first_column_used.append(bool(mask[:, 0].any()))
        widths.append(mask.shape[1] == cache.layers[0].keys.shape[2])
        return mask

    config, _ = alone_and_stops(zoo, many_prompts, method, "llama")
    def dropping(rows, index):
        models.add(id(rows.model))
        drop(rows, index)

    monkeypatch.setattr(core, "trim_columns", recording)
    monkeypatch.setattr(core.CachedRows, "drop", dropping)
    list(stream(zoo, many_prompts, method, "llama", config, 2))
    assert first_column_used and all(first_column_used) and all(widths)
    assert len(models) == (1 if method == "implicit" else 2)  # the guide's cache is trimmed too


@pytest.mark.parametrize("method", METHODS)
def test_sampling_decodes_all_questions_in_one_batch(zoo, many_prompts, method):
    config = settings(method, mode="topk", sample_temp=5.0, max_new_tokens=4)
    with pytest.raises(ValueError, match="greedy only"):
        stream(zoo, many_prompts, method, "llama", config, 3, torch.Generator().manual_seed(0))
    whole = [in_order(stream(zoo, many_prompts, method, "llama", config, size,
                             torch.Generator().manual_seed(0)))
             for size in (None, len(MANY_QUESTIONS))]
    assert whole[0] == whole[1]


def test_a_stream_encodes_the_shared_prefix_once_for_all_admissions(zoo, many_prompts,
                                                                     monkeypatch):
    import functools

    from DecodingMethodsModels.engines.core import shared_prefix_length

    model = zoo.decoder("llama", 0)
    pref, base = many_prompts
    one_row_inputs = []  # only the prefix is read alone: implicit PAD's steps have 2 rows or more
    original = model.forward

    @functools.wraps(original)
    def recording(*args, **kwargs):
        if kwargs["input_ids"].shape[0] == 1:
            one_row_inputs.append(kwargs["input_ids"].shape[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording)
    config = settings("implicit", max_new_tokens=STEPS)
    assert len(dict(stream_pad_implicit(model, base, pref, config, 2))) == len(pref)
    assert one_row_inputs == [shared_prefix_length(base + pref)] and one_row_inputs[0] > 20
