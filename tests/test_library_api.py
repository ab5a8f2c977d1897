"""The public library API (processors.py, api.py) on tiny random Llama and Qwen2 models: the
processors inside `model.generate` against the CLI's engine and a cache-free beam reference,
sampling, streamers, the engine as `custom_generate`, and `personalise`."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from conftest import beam_generate as beam_run
from conftest import same_run
from transformers import LogitsProcessor, TextStreamer

import DecodingMethodsModels.library.processors as processors
from DecodingMethodsModels import (
    AmuletProcessor,
    LinearAlignmentProcessor,
    amulet_generate,
    amulet_rule,
    decode_two_prompts,
    la_generate,
    la_rule,
    personalise,
)
from DecodingMethodsModels.engines.core import left_pad
from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.library.processors import beam_sources
from DecodingMethodsModels.pipeline.methods import cut_at_eos
from DecodingMethodsModels.prompts.amulet import encode_prompt, preference_sentence

FAMILIES = ("llama", "qwen2")
QUESTIONS = (
    "Why is the sky blue?",
    "Write a haiku about a long and winding road through the quiet hills after the rain.",
    "Hi",
    "How do I keep basil alive on a windowsill in winter?",
)
EOS, PAD = 2, 2
STEPS = 12
SHARPEN = 10.0  # as tests/test_engine.py: top scores far apart compared with fp32 noise
METHODS = {
    "la": lambda: la_rule(2.0),
    "amulet_closed_form": lambda: amulet_rule(60, 2.0, 2.0, 10.0, "closed_form"),
    "amulet_iterative": lambda: amulet_rule(60, 2.0, 2.0, 10.0, "iterative"),
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tiny_model_dirs) -> dict:
    from conftest import sharpened_models

    return sharpened_models(tiny_model_dirs, FAMILIES, SHARPEN)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    sentence = preference_sentence("creative")
    pref = [encode_prompt(tokenizer, q, sentence, True) for q in QUESTIONS]
    base = [encode_prompt(tokenizer, q, "", True) for q in QUESTIONS]
    assert len({len(p) for p in pref}) == len(QUESTIONS)  # batches need left padding
    return pref, base


def padded(rows):
    return left_pad(rows, PAD)


@torch.inference_mode()
def generate_new_tokens(model, pref, processor=None, **kwargs) -> list[list[int]]:
    """`model.generate` on left-padded `pref`: the new tokens per row, cut after the EOS."""
    ids, mask = padded(pref)
    out = model.generate(
        ids, attention_mask=mask, logits_processor=[processor] if processor else None,
        max_new_tokens=STEPS, eos_token_id=[EOS], pad_token_id=PAD, **kwargs,
    )
    return [cut_at_eos(row, [EOS]) for row in out[:, ids.shape[1]:].tolist()]


def engine_tokens(model, pref, base, rule) -> list[list[int]]:
    return decode_two_prompts(model, pref, base, rule, STEPS, [EOS], PAD).token_ids


def processor_for(model, base, rule) -> processors.TwoPromptProcessor:
    ids, mask = padded(base)
    return processors.TwoPromptProcessor(model, ids, rule, extra_attention_mask=mask)


# ----- greedy: the processor inside generate gives the engine's tokens -------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("batch", [1, 4])
def test_processor_in_greedy_generate_gives_the_engine_tokens(models, prompts, family, method,
                                                              batch):
    model = models[family]
    pref, base = prompts[0][:batch], prompts[1][:batch]
    rule = METHODS[method]()
    got = generate_new_tokens(model, pref, processor_for(model, base, rule), do_sample=False)
    assert got == engine_tokens(model, pref, base, rule)
    assert got != generate_new_tokens(model, pref, do_sample=False)  # the method matters


@pytest.mark.parametrize("family", FAMILIES)
def test_named_processors_are_the_rules_with_the_paper_settings(models, prompts, family):
    model = models[family]
    pref, base = prompts
    ids, mask = padded(base)
    amulet = generate_new_tokens(model, pref, AmuletProcessor(model, ids, mask))
    assert amulet == engine_tokens(model, pref, base, METHODS["amulet_closed_form"]())
    la = generate_new_tokens(model, pref, LinearAlignmentProcessor(model, ids, mask, ratio=2.0))
    assert la == engine_tokens(model, pref, base, la_rule(2.0))
    assert la != amulet


def test_a_processor_reused_for_a_second_generate_call_starts_afresh(models, prompts):
    model = models["qwen2"]
    pref, base = prompts
    processor = processor_for(model, base, la_rule(2.0))
    first = generate_new_tokens(model, pref, processor)
    assert generate_new_tokens(model, pref, processor) == first
    solo = processor_for(model, base[:1], la_rule(2.0))
    generate_new_tokens(model, pref[:1], solo)
    with pytest.raises(ValueError, match="one extra prompt per prompt"):
        generate_new_tokens(model, pref[:2], processor_for(model, base[:3], la_rule(2.0)))
    assert generate_new_tokens(model, pref[:1], solo) == first[:1]


def test_rows_rewritten_in_place_are_refused_not_silently_misread(models, prompts):
    model = models["llama"]
    pref, base = prompts
    processor = processor_for(model, base, la_rule(2.0))
    ids, _ = padded(pref)
    vocab = model.config.vocab_size
    with torch.no_grad():
        processor(ids, torch.zeros(len(pref), vocab))
        step_one = torch.cat([ids, torch.full((len(pref), 1), 7)], dim=1)
        processor(step_one, torch.zeros(len(pref), vocab))
        rewritten = torch.cat([ids, torch.full((len(pref), 2), 8)], dim=1)  # 7 became 8
        with pytest.raises(ValueError, match="no longer extend"):
            processor(rewritten, torch.zeros(len(pref), vocab))


# ----- beam search: the base caches follow the beams --------------------------------------------


def test_beam_sources_finds_the_row_each_beam_extends():
    previous = torch.tensor([[5, 6], [5, 7], [1, 1], [1, 2]])  # 2 questions x 2 beams
    current = torch.tensor([[5, 7, 9], [5, 7, 3], [1, 2, 0], [1, 1, 4]])
    assert beam_sources(previous, current, beams=2).tolist() == [1, 1, 3, 2]
    assert beam_sources(previous, current, beams=1) is None  # row 0 does not extend row 0
    wrong = current.clone()
    wrong[2, 0] = 5  # extends a row of the other question only
    assert beam_sources(previous, wrong, beams=2) is None
    assert beam_sources(previous, current[:, :2], beams=2) is None


class CacheFreeReference(LogitsProcessor):
    """The definition: each row's base log-probs from its whole sequence (base prompt + its
    generated tokens), encoded alone with no cache; records every call's input ids."""

    def __init__(self, model, base, rule, beams):
        self.model, self.base, self.rule, self.beams = model, base, rule, beams
        self.calls: list[torch.Tensor] = []
        self.prompt_len: int | None = None

    def __call__(self, input_ids, scores):
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
        self.calls.append(input_ids.clone())
        rows = []
        for r, row in enumerate(input_ids):
            ids = self.base[r // self.beams] + row[self.prompt_len:].tolist()
            logits = self.model(input_ids=torch.tensor([ids]), use_cache=False).logits
            rows.append(torch.log_softmax(logits[0, -1].float(), dim=-1))
        return self.rule(torch.log_softmax(scores.float(), dim=-1), torch.stack(rows))


def beam_generate(model, pref, processor, beams):
    ids, mask = left_pad(pref, PAD)
    return beam_run(model, ids, mask, processor, beams, STEPS, EOS, PAD)


@pytest.mark.parametrize("family", FAMILIES)
def test_beam_search_processor_equals_a_cache_free_reference(models, prompts, family,
                                                             monkeypatch):
    model = models[family]
    pref, base = prompts[0][:2], prompts[1][:2]
    rule, beams = METHODS["amulet_closed_form"](), 4
    reference = CacheFreeReference(model, base, rule, beams)
    expected = beam_generate(model, pref, reference, beams)
    got = beam_generate(model, pref, processor_for(model, base, rule), beams)
    assert same_run(got, expected)
    # the beams were reordered at some step, so a cache that did not follow them would differ
    width = reference.prompt_len
    reorders = [beam_sources(before[:, width:], now[:, width:], beams)
                for before, now in pairwise(reference.calls)]
    identity = torch.arange(len(pref) * beams)
    assert all(s is not None for s in reorders)
    assert any(not torch.equal(s, identity) for s in reorders)
    monkeypatch.setattr(processors, "beam_sources",
                        lambda previous, current, beams: torch.arange(previous.shape[0]))
    assert not same_run(beam_generate(model, pref, processor_for(model, base, rule), beams),
                        expected)


# ----- sampling, streamers -----------------------------------------------------------------------


def sample(model, pref, processor, seed, **kwargs):
    torch.manual_seed(seed)
    return generate_new_tokens(model, pref, processor, do_sample=True, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_with_the_processor_is_reproducible_under_a_seed(models, prompts, family):
    model = models[family]
    pref, base = prompts
    warpers = dict(temperature=1.5, top_k=50, top_p=0.95)
    processor = processor_for(model, base, METHODS["amulet_closed_form"]())
    first = sample(model, pref, processor, 7, **warpers)
    assert sample(model, pref, processor, 7, **warpers) == first
    assert sample(model, pref, processor, 8, **warpers) != first


@torch.inference_mode()
def engine_sample(model, pref, base, generate_fn, seed, **kwargs):
    ids, mask = padded(pref)
    base_ids, base_mask = padded(base)
    torch.manual_seed(seed)
    out = model.generate(ids, attention_mask=mask, custom_generate=generate_fn,
                         base_ids=base_ids, base_attention_mask=base_mask, do_sample=True,
                         max_new_tokens=STEPS, eos_token_id=[EOS], pad_token_id=PAD, **kwargs)
    return [cut_at_eos(row, [EOS]) for row in out[:, ids.shape[1]:].tolist()]


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_by_processor_and_by_engine_draw_the_same_tokens_under_one_seed(models, prompts,
                                                                                  family):
    """Both draw with one torch.multinomial per step from softmax(scores / temperature) on the
    global generator, so one seed gives one sample (top-k/top-p are implemented separately)."""
    model = models[family]
    pref, base = prompts
    processor = processor_for(model, base, METHODS["amulet_closed_form"]())
    by_processor = sample(model, pref, processor, 3, temperature=1.5)
    assert by_processor == engine_sample(model, pref, base, amulet_generate, 3, temperature=1.5)
    assert by_processor != sample(model, pref, processor, 4, temperature=1.5)


class CollectingStreamer(TextStreamer):
    def __init__(self, tokenizer):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.pieces: list[str] = []
        self.ended = False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.pieces.append(text)
        self.ended = self.ended or stream_end


@pytest.mark.parametrize("do_sample", [False, True])
def test_a_streamer_receives_the_text_that_is_returned(models, prompts, tokenizer, do_sample):
    model = models["llama"]
    pref, base = prompts[0][:1], prompts[1][:1]
    streamer = CollectingStreamer(tokenizer)
    torch.manual_seed(0)
    got = generate_new_tokens(model, pref, processor_for(model, base, la_rule(2.0)),
                              streamer=streamer, do_sample=do_sample)[0]
    text = tokenizer.decode(got, skip_special_tokens=True)
    assert streamer.ended and "".join(streamer.pieces) == text
    assert len(got) == STEPS and text.strip()


def test_stopping_criteria_end_the_processor_run(models, prompts):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class AfterFive(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= width + 5)

    model = models["qwen2"]
    pref, base = prompts
    width = padded(pref)[0].shape[1]
    rule = la_rule(2.0)
    got = generate_new_tokens(model, pref, processor_for(model, base, rule),
                              stopping_criteria=StoppingCriteriaList([AfterFive()]))
    assert got == [row[:5] for row in engine_tokens(model, pref, base, rule)]


# ----- the engine as custom_generate -------------------------------------------------------------


@torch.inference_mode()
def custom(model, pref, base, generate_fn, **kwargs):
    ids, mask = padded(pref)
    base_ids, base_mask = padded(base)
    out = model.generate(ids, attention_mask=mask, custom_generate=generate_fn,
                         base_ids=base_ids, base_attention_mask=base_mask, max_new_tokens=STEPS,
                         eos_token_id=[EOS], pad_token_id=PAD, **kwargs)
    return [cut_at_eos(row, [EOS]) for row in out[:, ids.shape[1]:].tolist()]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", [1, 4])
def test_custom_generate_gives_the_processor_tokens(models, prompts, family, batch):
    model = models[family]
    pref, base = prompts[0][:batch], prompts[1][:batch]
    for solver in ("closed_form", "iterative"):
        expected = generate_new_tokens(model, pref, processor_for(
            model, base, amulet_rule(60, 2.0, 3.0, 10.0, solver)))
        assert custom(model, pref, base, amulet_generate, player_lambda=3.0,
                      solver=solver) == expected
    expected = generate_new_tokens(model, pref, processor_for(model, base, la_rule(0.5)))
    assert custom(model, pref, base, la_generate, ratio=0.5) == expected
    assert custom(model, pref, base, la_generate) != expected  # the ratio reached the engine


def test_custom_generate_stops_at_the_eos_like_generate(models, prompts):
    model = models["llama"]
    pref, base = prompts
    unstopped = custom(model, pref, base, amulet_generate)
    stop = unstopped[1][3]
    ids, mask = padded(pref)
    base_ids, base_mask = padded(base)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, custom_generate=amulet_generate,
                             base_ids=base_ids, base_attention_mask=base_mask,
                             max_new_tokens=STEPS, eos_token_id=[EOS, stop], pad_token_id=PAD)
    expected = [cut_at_eos(row, [EOS, stop]) for row in unstopped]
    assert out.shape[1] == ids.shape[1] + max(len(row) for row in expected)
    assert [cut_at_eos(row, [EOS, stop]) for row in out[:, ids.shape[1]:].tolist()] == expected


def test_custom_generate_refuses_what_the_engine_cannot_do(models, prompts):
    model = models["llama"]
    pref, base = prompts
    with pytest.raises(ValueError, match="beam search"):
        custom(model, pref, base, amulet_generate, num_beams=2)
    with pytest.raises(ValueError, match="cannot apply"):
        custom(model, pref, base, amulet_generate, logits_processor=[
            processor_for(model, base, la_rule(1.0))])
    with pytest.raises(ValueError, match="base_ids"):
        ids, mask = padded(pref)
        model.generate(ids, attention_mask=mask, custom_generate=amulet_generate,
                       max_new_tokens=2, pad_token_id=PAD)


# ----- personalise ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_with_tokenizer(models, tokenizer):
    model = models["qwen2"]
    return model, tokenizer


def test_personalise_returns_the_processor_texts_in_any_batch_size(tiny_with_tokenizer, prompts):
    model, tokenizer = tiny_with_tokenizer
    pref, base = prompts
    ids, mask = padded(base)
    expected = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in
                generate_new_tokens(model, pref, AmuletProcessor(model, ids, mask))]
    for batch_size in (1, 3, 8):
        got = personalise(model, tokenizer, list(QUESTIONS), "creative", "amulet",
                          max_new_tokens=STEPS, batch_size=batch_size)
        assert got == expected
    sentence = preference_sentence("creative")
    assert personalise(model, tokenizer, list(QUESTIONS), sentence,
                       max_new_tokens=STEPS) == expected
    assert personalise(model, tokenizer, list(QUESTIONS), "concise",
                       max_new_tokens=STEPS) != expected


def test_personalise_takes_the_method_settings(tiny_with_tokenizer, prompts):
    model, tokenizer = tiny_with_tokenizer
    questions = list(QUESTIONS[:2])
    la = personalise(model, tokenizer, questions, method="la", ratio=0.5, max_new_tokens=STEPS)
    pref, base = prompts
    expected = engine_tokens(model, pref[:2], base[:2], la_rule(0.5))
    assert la == [tokenizer.decode(r, skip_special_tokens=True).strip() for r in expected]
    sampled = personalise(model, tokenizer, questions, do_sample=True, temperature=1.5, seed=1,
                          max_new_tokens=STEPS)
    assert sampled == personalise(model, tokenizer, questions, do_sample=True, temperature=1.5,
                                  seed=1, max_new_tokens=STEPS)


def test_personalise_refuses_unknown_methods_settings_and_inputs(tiny_with_tokenizer):
    model, tokenizer = tiny_with_tokenizer
    with pytest.raises(UserError, match="unknown method 'cfg'"):
        personalise(model, tokenizer, ["Hi"], method="cfg")
    with pytest.raises(UserError, match=r"la takes no setting \['alpha'\]"):
        personalise(model, tokenizer, ["Hi"], method="la", alpha=2.0)
    with pytest.raises(UserError, match="list of strings"):
        personalise(model, tokenizer, "Hi")
    with pytest.raises(UserError, match="empty preference"):
        personalise(model, tokenizer, ["Hi"], preference="  ")


# ----- evals/bench/library_bench.py -------------------------------------------------------------


def test_library_bench_times_every_path_and_all_give_the_engine_tokens(models, prompts):
    from evals.bench.library_bench import bench, markdown_table

    pref, base = prompts
    rows = bench(models["llama"], pref, base, steps=4, pad_id=PAD, repeats=1)
    assert len(rows) == 5 and all(r["tokens"] == 4 * len(pref) for r in rows)
    assert [r["same_tokens"] for r in rows[1:4]] == [f"{len(pref)}/{len(pref)}"] * 3
    assert rows[4]["path"].startswith("engine") and rows[4]["same_tokens"] == "-"
    table = markdown_table(rows)
    assert table.count("\n") == len(rows) + 1 and "HF CFG" in table
