"""ARGS and PAD as logits processors (processors.ArgsProcessor, PadProcessor) inside
`model.generate`, on tiny random Llama and Qwen2 decoders with a tiny random Llama PersRM and a
tiny random LlamaForSequenceClassification reward model (SmolLM2 tokenizer): against the
reward-guided engine (reward_guided.py), a cache-free beam reference, Linear Alignment, and
transformers' own sampling and streamers."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from conftest import beam_generate as beam_run
from conftest import guided_engine_tokens, same_run, sharpened
from transformers import LogitsProcessor, TextStreamer

import DecodingMethodsModels.library.processors as processors
from DecodingMethodsModels import (
    ArgsProcessor,
    LinearAlignmentProcessor,
    PadProcessor,
    pad_implicit_generate,
)
from DecodingMethodsModels.engines.core import left_pad
from DecodingMethodsModels.engines.reference import _rewards
from DecodingMethodsModels.engines.reward_guided import (
    GuidedSettings,
)
from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.library.processors import beam_sources
from DecodingMethodsModels.pipeline.methods import cut_at_eos
from DecodingMethodsModels.prompts.amulet import encode_prompt, preference_sentence
from DecodingMethodsModels.rules.guided import args_scores, pad_scores

FAMILIES = ("llama", "qwen2")
METHODS = ("args", "pad", "implicit")
QUESTIONS = (
    "Why is the sky blue?",
    "Write a haiku about a long and winding road through the quiet hills after the rain.",
    "Hi",
    "How do I keep basil alive on a windowsill in winter?",
)
EOS, PAD = 2, 2
STEPS = 12
TOPK = 10
WEIGHT = {"args": 1.5, "pad": 0.8, "implicit": 1.5}
SHARPEN = 10.0  # as tests/test_engine.py: top scores far apart compared with fp32 noise

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tiny_model_dirs) -> dict:
    from conftest import sharpened_models

    return sharpened_models(tiny_model_dirs, FAMILIES, SHARPEN)


@pytest.fixture(scope="module")
def guides(tokenizer) -> dict:
    """A PersRM (a causal LM) and a one-label reward model, tiny, random, of the same vocab."""
    from conftest import tiny_config
    from transformers import AutoModelForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(100)
    persrm = AutoModelForCausalLM.from_config(tiny_config("llama", len(tokenizer)))
    config = tiny_config("llama", len(tokenizer))
    config.num_labels = 1
    torch.manual_seed(200)
    reward_model = LlamaForSequenceClassification(config)
    return {"persrm": sharpened(persrm, SHARPEN),
            "reward_model": sharpened(reward_model, SHARPEN)}


@pytest.fixture(scope="module")
def prompts(tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    sentence = preference_sentence("creative")
    pref = [encode_prompt(tokenizer, q, sentence, True) for q in QUESTIONS]
    base = [encode_prompt(tokenizer, q, "", True) for q in QUESTIONS]
    assert len({len(p) for p in pref}) == len(QUESTIONS)  # batches need left padding
    return pref, base


def processor_for(method, model, guides, pref, base, **options) -> LogitsProcessor:
    """The processor of `method` and the prompts `generate` reads with it (pref or base)."""
    options = {"weight": WEIGHT[method], "topk": TOPK, **options}
    ids, mask = left_pad(pref, PAD)
    if method == "args":
        return ArgsProcessor(guides["reward_model"], ids, mask, **options), pref
    if method == "pad":
        return PadProcessor(guides["persrm"], ids, mask, **options), pref
    return PadProcessor(model, ids, mask, **options), base


@torch.inference_mode()
def generate(model, prompts, processor, eos_ids=(EOS,), steps=STEPS, **kwargs):
    ids, mask = left_pad(prompts, PAD)
    out = model.generate(
        ids, attention_mask=mask, logits_processor=[processor] if processor else None,
        max_new_tokens=steps, eos_token_id=list(eos_ids), pad_token_id=PAD,
        return_dict_in_generate=True, output_scores=True, **kwargs,
    )
    tokens = [cut_at_eos(row, list(eos_ids)) for row in out.sequences[:, ids.shape[1]:].tolist()]
    return tokens, out


def engine_tokens(method, model, guides, pref, base, eos_ids=(EOS,)) -> list[list[int]]:
    settings = GuidedSettings(weight=WEIGHT[method], max_new_tokens=STEPS, eos_ids=eos_ids,
                              pad_id=PAD, topk=TOPK)
    return guided_engine_tokens(method, model, guides, pref, base, settings)


# ----- greedy: the processors inside generate give the engine's tokens -------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("batch", [1, 4])
def test_greedy_generate_with_the_processor_gives_the_engine_tokens(models, guides, prompts,
                                                                    family, method, batch):
    model = models[family]
    pref, base = prompts[0][:batch], prompts[1][:batch]
    processor, read = processor_for(method, model, guides, pref, base)
    got, out = generate(model, read, processor, do_sample=False)
    assert got == engine_tokens(method, model, guides, pref, base)
    assert all(int(torch.isfinite(s).sum(-1).max()) == TOPK for s in out.scores)
    plain, _ = generate(model, read, None, do_sample=False)
    assert got != plain  # the guide matters


def early_stop_ids(rows: list[list[int]]) -> list[int]:
    """EOS ids that end some rows early, at different steps: EOS and a token that row 0
    produces from step 2 on for the first time."""
    for position in range(2, STEPS - 1):
        token = rows[0][position]
        if token in rows[0][:position]:
            continue
        lengths = {len(cut_at_eos(row, [EOS, token])) for row in rows}
        if len(lengths) > 1:
            return [EOS, token]
    pytest.fail(f"no usable stop token in {rows}: choose other prompts")


@pytest.mark.parametrize("method", METHODS)
def test_rows_that_end_early_match_the_engine_which_drops_them(models, guides, prompts, method):
    """generate pads finished rows and the processor keeps reading them; the engine drops them.
    The rows still running must not notice."""
    model = models["qwen2"]
    pref, base = prompts
    eos_ids = early_stop_ids(engine_tokens(method, model, guides, pref, base, eos_ids=(-1,)))
    processor, read = processor_for(method, model, guides, pref, base)
    got, _ = generate(model, read, processor, eos_ids=eos_ids, do_sample=False)
    expected = engine_tokens(method, model, guides, pref, base, eos_ids=eos_ids)
    assert got == expected
    assert len({len(row) for row in expected}) > 1


@pytest.mark.parametrize("family", FAMILIES)
def test_implicit_pad_over_the_whole_vocabulary_is_linear_alignment_with_ratio_w_minus_1(
        models, prompts, family):
    model = models[family]
    pref, base = prompts
    weight = 2.5
    vocab = model.get_output_embeddings().weight.shape[0]
    pref_ids, pref_mask = left_pad(pref, PAD)
    base_ids, base_mask = left_pad(base, PAD)
    implicit, _ = generate(model, base, PadProcessor(model, pref_ids, pref_mask, weight, vocab))
    la = LinearAlignmentProcessor(model, base_ids, base_mask, ratio=weight - 1)
    assert implicit == generate(model, pref, la)[0]


# ----- beam search: the guides' caches follow the beams ------------------------------------------


class CacheFreeReference(LogitsProcessor):
    """The definition, row by row with no cache: the guide reads the row's own prompt + its
    generated tokens (+ each candidate, for ARGS) from scratch; records every call's ids."""

    def __init__(self, method, guide, guide_prompts, beams):
        self.method, self.guide, self.beams = method, guide, beams
        self.guide_prompts = guide_prompts
        self.calls: list[torch.Tensor] = []
        self.prompt_len: int | None = None

    def __call__(self, input_ids, scores):
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
        self.calls.append(input_ids.clone())
        z = scores.float()
        candidate_logits, candidates = torch.topk(z, TOPK, dim=-1)
        values = []
        for r, row in enumerate(input_ids):
            sequence = self.guide_prompts[r // self.beams] + row[self.prompt_len:].tolist()
            if self.method == "args":
                values.append(_rewards(self.guide, [sequence + [c] for c in
                                                    candidates[r].tolist()])[0])
            else:
                logits = self.guide(input_ids=torch.tensor([sequence]), use_cache=False).logits
                values.append(logits[0, -1].float()[candidates[r]])
        rule = args_scores if self.method == "args" else pad_scores
        chosen = rule(candidate_logits, torch.stack(values), WEIGHT[self.method])
        return torch.full_like(z, float("-inf")).scatter_(1, candidates, chosen)


def beam_generate(model, prompts, processor, beams):
    ids, mask = left_pad(prompts, PAD)
    return beam_run(model, ids, mask, processor, beams, STEPS, EOS, PAD)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_beam_search_with_the_processor_equals_a_cache_free_reference(
        models, guides, prompts, family, method, monkeypatch):
    model = models[family]
    pref, base = prompts[0][:2], prompts[1][:2]
    beams = 3
    guide = {"args": guides["reward_model"], "pad": guides["persrm"], "implicit": model}[method]
    reference = CacheFreeReference(method, guide, pref, beams)
    processor, read = processor_for(method, model, guides, pref, base)
    expected = beam_generate(model, read, reference, beams)
    assert same_run(beam_generate(model, read, processor, beams), expected)
    # the beams were reordered at some step, so caches that did not follow them would differ
    width = reference.prompt_len
    reorders = [beam_sources(before[:, width:], now[:, width:], beams)
                for before, now in pairwise(reference.calls)]
    identity = torch.arange(len(pref) * beams)
    assert all(s is not None for s in reorders)
    assert any(not torch.equal(s, identity) for s in reorders)
    monkeypatch.setattr(processors, "beam_sources",
                        lambda previous, current, beams: torch.arange(previous.shape[0]))
    processor, _ = processor_for(method, model, guides, pref, base)
    assert not same_run(beam_generate(model, read, processor, beams), expected)


# ----- sampling, streamers, reuse -------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_sampling_with_the_processor_is_reproducible_under_a_seed(models, guides, prompts,
                                                                  method):
    model = models["llama"]
    pref, base = prompts
    processor, read = processor_for(method, model, guides, pref, base)

    def sample(seed):
        torch.manual_seed(seed)
        return generate(model, read, processor, do_sample=True, temperature=5.0)[0]

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first


class CollectingStreamer(TextStreamer):
    def __init__(self, tokenizer):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.pieces: list[str] = []
        self.ended = False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.pieces.append(text)
        self.ended = self.ended or stream_end


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("do_sample", [False, True])
def test_a_streamer_receives_the_text_that_is_returned(models, guides, prompts, tokenizer,
                                                       method, do_sample):
    model = models["llama"]
    pref, base = prompts[0][:1], prompts[1][:1]
    processor, read = processor_for(method, model, guides, pref, base)
    streamer = CollectingStreamer(tokenizer)
    torch.manual_seed(0)
    got = generate(model, read, processor, streamer=streamer, do_sample=do_sample)[0][0]
    text = tokenizer.decode(got, skip_special_tokens=True)
    assert streamer.ended and "".join(streamer.pieces) == text
    assert text.strip()


def test_a_processor_reused_for_another_generate_call_starts_afresh(models, guides, prompts):
    model = models["qwen2"]
    pref, base = prompts
    processor, read = processor_for("args", model, guides, pref, base)
    first = generate(model, read, processor)[0]
    generate(model, read, processor, steps=3)  # another length
    assert generate(model, read, processor)[0] == first


# ----- errors -----------------------------------------------------------------------------------


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_guides_of_another_vocabulary_are_refused(models, prompts, tokenizer, tmp_path):
    from rm_helpers import build_tokenizer, tiny_llama_config
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    other = build_tokenizer(tmp_path / "other")
    pref = prompts[0][:1]
    ids, mask = left_pad(pref, PAD)
    small_rm = LlamaForSequenceClassification(tiny_llama_config(other, num_labels=1)).eval()
    small_lm = LlamaForCausalLM(tiny_llama_config(other)).eval()
    for processor, says in ((ArgsProcessor(small_rm, ids, mask), "must share one tokenizer"),
                            (PadProcessor(small_lm, ids, mask), "PAD's second rule")):
        with pytest.raises(UserError, match=says) as err:
            generate(models["llama"], pref, processor)
        one_line(err)


@pytest.mark.parametrize("method", METHODS)
def test_bad_k_and_weights_are_refused(models, guides, prompts, tokenizer, method):
    model = models["llama"]
    pref, base = prompts[0][:1], prompts[1][:1]
    for options, message in [({"topk": 0}, "at least 1"), ({"topk": 2.5}, "whole number"),
                             ({"weight": float("nan")}, "finite"),
                             ({"weight": float("inf")}, "finite")]:
        with pytest.raises(UserError, match=message) as err:
            processor_for(method, model, guides, pref, base, **options)
        one_line(err)
    processor, read = processor_for(method, model, guides, pref, base, topk=len(tokenizer) + 1)
    with pytest.raises(UserError, match="larger than the vocabulary") as err:
        generate(model, read, processor)
    one_line(err)


def test_guides_of_the_wrong_kind_are_refused(models, guides, prompts):
    ids, mask = left_pad(prompts[0][:1], PAD)
    with pytest.raises(UserError, match="one-label sequence classifier") as err:
        ArgsProcessor(models["llama"], ids, mask)
    one_line(err)
    with pytest.raises(UserError, match="no LM head") as err:
        PadProcessor(guides["reward_model"], ids, mask)
    one_line(err)


@pytest.mark.parametrize("method", METHODS)
def test_fewer_guide_prompts_than_questions_are_refused(models, guides, prompts, method):
    model = models["llama"]
    pref, base = prompts  # four questions
    processor, read = processor_for(method, model, guides, pref[:2], base[:2])
    every = base if method == "implicit" else pref
    with pytest.raises(ValueError, match="not 2 copies"):
        generate(model, every, processor, steps=2)
    # the same two guide prompts serve two returned sequences of each of their two questions
    processor, read = processor_for(method, model, guides, pref[:2], base[:2])
    tokens, _ = generate(model, read[:2], processor, steps=2, do_sample=True,
                         num_return_sequences=2)
    assert len(tokens) == 4


# ----- custom_generate=pad_implicit_generate ----------------------------------------------------


@torch.inference_mode()
def custom_implicit(model, pref, base, **kwargs):
    base_ids, base_mask = left_pad(base, PAD)
    pref_ids, pref_mask = left_pad(pref, PAD)
    out = model.generate(base_ids, attention_mask=base_mask, custom_generate=pad_implicit_generate,
                         pref_ids=pref_ids, pref_attention_mask=pref_mask, max_new_tokens=STEPS,
                         eos_token_id=[EOS], pad_token_id=PAD, **kwargs)
    return [cut_at_eos(row, [EOS]) for row in out[:, base_ids.shape[1]:].tolist()]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", [1, 4])
def test_custom_generate_pad_implicit_gives_the_processor_tokens(models, prompts, family, batch):
    model = models[family]
    pref, base = prompts[0][:batch], prompts[1][:batch]
    processor, read = processor_for("implicit", model, {}, pref, base, weight=2.0)
    expected = generate(model, read, processor, do_sample=False)[0]
    assert custom_implicit(model, pref, base, weight=2.0, topk=TOPK, do_sample=False) == expected


def test_custom_generate_pad_implicit_samples_under_a_seed_and_refuses_the_rest(models,
                                                                               prompts):
    model = models["llama"]
    pref, base = prompts

    def sample(seed):
        torch.manual_seed(seed)
        return custom_implicit(model, pref, base, do_sample=True, temperature=5.0)

    assert sample(3) == sample(3) != sample(4)
    for options, message in [({"num_beams": 2}, "beam search"), ({"top_p": 0.9}, "top_p"),
                             ({"repetition_penalty": 1.2}, "penalties")]:
        with pytest.raises(ValueError, match=message):
            custom_implicit(model, pref, base, do_sample=True, **options)
    # greedy ignores a top_p or top_k set in the generation config (Llama-3-Instruct: 0.9)
    greedy = custom_implicit(model, pref, base, do_sample=False)
    assert custom_implicit(model, pref, base, do_sample=False, top_p=0.9, top_k=2) == greedy
    with pytest.raises(ValueError, match="not 2 copies"):  # two preference prompts, four bases
        custom_implicit(model, pref[:2], base)
    base_ids, base_mask = left_pad(base, PAD)
    with pytest.raises(ValueError, match="pref_ids"):
        model.generate(base_ids, attention_mask=base_mask, custom_generate=pad_implicit_generate,
                       max_new_tokens=2, pad_token_id=PAD)


# ----- personalise(method="pad_implicit") ---------------------------------------------------------


def test_personalise_pad_implicit_returns_the_processor_texts(models, prompts, tokenizer):
    from DecodingMethodsModels import personalise

    model = models["qwen2"]
    pref, base = prompts
    processor, read = processor_for("implicit", model, {}, pref, base, weight=2.0)
    expected = [tokenizer.decode(row, skip_special_tokens=True).strip()
                for row in generate(model, read, processor)[0]]
    for batch_size in (1, 4):
        got = personalise(model, tokenizer, list(QUESTIONS), "creative", "pad_implicit",
                          max_new_tokens=STEPS, batch_size=batch_size, weight=2.0, topk=TOPK)
        assert got == expected
    assert personalise(model, tokenizer, list(QUESTIONS), "creative", "pad_implicit",
                       max_new_tokens=STEPS, weight=0.0) != expected
    sampled = [personalise(model, tokenizer, list(QUESTIONS), method="pad_implicit",
                           max_new_tokens=STEPS, do_sample=True, temperature=5.0, seed=seed)
               for seed in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]
    for options, message in [({"top_k": 5}, "no top_k"), ({"weight": float("nan")}, "finite"),
                             ({"topk": 0}, "at least 1"), ({"ratio": 2.0}, "takes no setting")]:
        with pytest.raises(UserError, match=message) as err:
            personalise(model, tokenizer, ["Hi"], method="pad_implicit", do_sample=True,
                        **options)
        one_line(err)


# ----- evals/bench/library_bench.py -------------------------------------------------------------


def test_library_bench_times_each_processor_beside_its_engine_with_the_same_tokens(
        models, guides, prompts):
    from evals.bench.library_bench import guided_bench, markdown_table

    pref, base = prompts
    rows = guided_bench(models["llama"], guides, pref, base, steps=4, pad_id=PAD, repeats=1,
                        topk=TOPK, weight=1.5)
    assert len(rows) == 6 and all(r["tokens"] == 4 * len(pref) for r in rows)
    processors_rows = [r for r in rows if "Processor" in r["path"]]
    assert len(processors_rows) == 3
    assert all(r["same_tokens"] == f"{len(pref)}/{len(pref)}" for r in processors_rows)
    assert markdown_table(rows).count("\n") == len(rows) + 1
