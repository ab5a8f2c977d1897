"""The reward-guided engine (DecodingMethodsModels/engines/reward_guided.py: ARGS, PAD, implicit
PAD) on tiny random Llama and Qwen2 decoders, a tiny random Llama PersRM and a tiny random
LlamaForSequenceClassification reward model, all with the SmolLM2 tokenizer, against
independent references: the cache-free one-question-at-a-time definition
(reward_guided_reference.py), transformers' greedy `generate`, and the two-prompt engine's
Linear Alignment."""

from __future__ import annotations

import pytest
import torch
from conftest import sharpened

from DecodingMethodsModels.engines.core import NonFiniteScoresError
from DecodingMethodsModels.engines.guides import RewardGuide
from DecodingMethodsModels.engines.prompt_rows import decode_two_prompts
from DecodingMethodsModels.engines.reference import (
    reference_args,
    reference_pad,
    reference_pad_implicit,
)
from DecodingMethodsModels.engines.reward_guided import (
    GuidedSettings,
    check_same_tokenizer,
    decode_args,
    decode_pad,
    decode_pad_implicit,
)
from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.prompts.amulet import encode_prompt, preference_sentence
from DecodingMethodsModels.rules.combine import la_rule
from DecodingMethodsModels.rules.guided import args_scores, choose_candidates, pad_scores

FAMILIES = ("llama", "qwen2")
METHODS = ("args", "pad", "implicit")
SEEDS = (0, 1, 2)
QUESTIONS = (
    "Why is the sky blue?",
    "Write a haiku about a long and winding road through the quiet hills after the rain.",
    "Hi",
)
EOS, PAD = 2, 2
STEPS = 12
WEIGHT = {"args": 1.5, "pad": 0.8, "implicit": 1.5}
# As in test_engine.py: scaled-up weights keep the top scores far apart compared with fp32
# differences between code paths.
SHARPEN = 10.0

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Zoo:
    """Tiny random models, built on first use: decoders per (family, seed), guides per seed."""

    def __init__(self, vocab: int):
        self.vocab, self.built = vocab, {}

    def _build(self, key, make):
        if key not in self.built:
            self.built[key] = sharpened(make(), SHARPEN)
        return self.built[key]

    def decoder(self, family: str, seed: int):
        from conftest import tiny_config
        from transformers import AutoModelForCausalLM

        def make():
            torch.manual_seed(seed)
            return AutoModelForCausalLM.from_config(tiny_config(family, self.vocab))
        return self._build(("decoder", family, seed), make)

    def persrm(self, seed: int):
        return self.decoder("llama", 100 + seed)

    def reward_model(self, seed: int, num_labels: int = 1):
        from conftest import tiny_config
        from transformers import LlamaForSequenceClassification

        def make():
            config = tiny_config("llama", self.vocab)
            config.num_labels = num_labels
            torch.manual_seed(200 + seed)
            return LlamaForSequenceClassification(config)
        return self._build(("rm", seed, num_labels), make)


@pytest.fixture(scope="module")
def zoo(tokenizer) -> Zoo:
    return Zoo(len(tokenizer))


@pytest.fixture(scope="module")
def prompts(tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """Preference and base prompt ids of three questions of clearly different lengths."""
    sentence = preference_sentence("creative")
    pref = [encode_prompt(tokenizer, q, sentence, True) for q in QUESTIONS]
    base = [encode_prompt(tokenizer, q, "", True) for q in QUESTIONS]
    assert len({len(p) for p in pref}) == len(QUESTIONS)
    return pref, base


def settings(method: str = "args", eos_ids=(EOS,), **changes) -> GuidedSettings:
    values = dict(weight=WEIGHT[method], max_new_tokens=STEPS, eos_ids=eos_ids, pad_id=PAD,
                  topk=10)
    values.update(changes)
    return GuidedSettings(**values)


def run_engine(zoo, prompts, method, family, seed, config, generator=None):
    pref, base = prompts
    model = zoo.decoder(family, seed)
    if method == "args":
        return decode_args(model, zoo.reward_model(seed), pref, config, generator).token_ids
    if method == "pad":
        return decode_pad(model, zoo.persrm(seed), pref, config, generator).token_ids
    return decode_pad_implicit(model, base, pref, config, generator).token_ids


def run_reference(zoo, prompts, method, family, seed, config):
    pref, base = prompts
    model = zoo.decoder(family, seed)
    if method == "args":
        return reference_args(model, zoo.reward_model(seed), pref, config)
    if method == "pad":
        return reference_pad(model, zoo.persrm(seed), pref, config)
    return reference_pad_implicit(model, base, pref, config)


def cut_at_first(ids: list[int], stops: set[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in stops:
            return ids[: position + 1]
    return ids


def early_stop_ids(rows: list[list[int]]) -> list[int]:
    """EOS ids that end question 0 early (a token it produces from step 2 on, seen there for the
    first time) and leave the questions ending at different steps."""
    for position in range(2, STEPS - 1):
        token = rows[0][position]
        if token in rows[0][:position]:
            continue
        lengths = {len(cut_at_first(row, {EOS, token})) for row in rows}
        if len(lengths) > 1:
            return [EOS, token]
    pytest.fail(f"no usable stop token in {rows}: choose other prompts or seeds")


@torch.inference_mode()
def hf_greedy(model, prompt: list[int]) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
        max_new_tokens=STEPS, eos_token_id=[EOS], pad_token_id=PAD,
    )
    return out[0, ids.shape[1]:].tolist()


# ----- the pure rules ---------------------------------------------------------------------------


def test_args_scores_are_logits_plus_weighted_rewards():
    z = torch.tensor([[3.0, 1.0, -2.0], [0.5, 0.25, 0.0]])
    r = torch.tensor([[-1.0, 2.0, 0.0], [4.0, -4.0, 1.0]])
    expected = [[3.0 - 1.5, 1.0 + 3.0, -2.0], [0.5 + 6.0, 0.25 - 6.0, 1.5]]
    assert args_scores(z, r, 1.5).tolist() == expected
    assert torch.equal(args_scores(z, r, 0.0), z)


def test_pad_scores_follow_their_formula_and_equal_the_mixture_up_to_a_row_constant():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(4, 7, generator=generator) * 3
    u = torch.randn(4, 7, generator=generator) * 3
    w = 0.8
    literal = z + w * (torch.log_softmax(u, -1) - torch.log_softmax(z, -1))
    got = pad_scores(z, u, w)
    assert torch.allclose(got, literal, atol=1e-6)
    mixture_gap = got - ((1 - w) * z + w * u)  # (B, k): one constant per row
    assert torch.allclose(mixture_gap, mixture_gap[:, :1].expand_as(mixture_gap), atol=1e-5)
    assert torch.equal(pad_scores(z, u, 0.0), z)


def test_pad_scores_stay_finite_where_a_logit_is_minus_infinity():
    z = torch.tensor([[2.0, 1.0, float("-inf")]])
    u = torch.tensor([[float("-inf"), 1.0, 0.0]])
    scores = pad_scores(z, u, 0.5)
    assert not torch.isnan(scores).any()
    assert int(scores.argmax()) == 1


def test_rules_reject_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(B, k\)"):
        args_scores(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
    with pytest.raises(ValueError, match=r"\(B, k\)"):
        pad_scores(torch.zeros(3), torch.zeros(3), 1.0)


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_topk_mode_draws_from_softmax_of_scores_over_temperature():
    scores = torch.tensor([2.0, 1.5, 0.7, 0.0, -0.4])
    temp, draws = 0.7, 40000
    generator = torch.Generator().manual_seed(1234)
    chosen = choose_candidates(scores.expand(draws, -1), "topk", temp, generator)
    counts = torch.bincount(chosen, minlength=5).double()
    # 4 degrees of freedom: P(chi2 > 30) < 1e-5
    assert chi_square(counts, torch.softmax(scores.double() / temp, -1)) < 30
    # the same draws are far from the distributions of other temperatures
    assert chi_square(counts, torch.softmax(scores.double() / 1.0, -1)) > 200
    assert chi_square(counts, torch.softmax(scores.double() / 0.5, -1)) > 200
    again = choose_candidates(scores.expand(draws, -1), "topk", temp,
                              torch.Generator().manual_seed(1234))
    assert torch.equal(chosen, again)


def test_greedy_mode_takes_the_argmax():
    scores = torch.tensor([[0.1, 3.0, 2.9], [5.0, -1.0, 4.0]])
    assert choose_candidates(scores, "greedy", 0.7, None).tolist() == [1, 0]


# ----- the engine against its references ------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_zero_weight_is_plain_greedy_decoding(zoo, prompts, method, family):
    pref, base = prompts
    model = zoo.decoder(family, 0)
    got = run_engine(zoo, prompts, method, family, 0, settings(method, weight=0.0))
    decoded_prompts = base if method == "implicit" else pref
    assert got == [hf_greedy(model, p) for p in decoded_prompts]
    # and the weight matters: the guide changes the tokens
    assert run_engine(zoo, prompts, method, family, 0, settings(method)) != got


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_cached_batched_engine_equals_cache_free_reference(zoo, prompts, method, family, seed):
    unstopped = run_engine(zoo, prompts, method, family, seed, settings(method, ignore_eos=True))
    eos_ids = early_stop_ids(unstopped)
    config = settings(method, eos_ids=eos_ids)
    got = run_engine(zoo, prompts, method, family, seed, config)
    assert got == run_reference(zoo, prompts, method, family, seed, config)
    assert got == [cut_at_first(row, set(eos_ids)) for row in unstopped]
    assert len(got[0]) < STEPS and len({len(row) for row in got}) > 1


@pytest.mark.parametrize("rm_batch_size", [1, 10, 25, 1000])
def test_reward_model_chunks_give_the_tokens_of_one_forward(zoo, prompts, rm_batch_size):
    unstopped = run_engine(zoo, prompts, "args", "llama", 1, settings(ignore_eos=True))
    eos_ids = early_stop_ids(unstopped)
    whole = run_engine(zoo, prompts, "args", "llama", 1, settings(eos_ids=eos_ids))
    chunked = run_engine(zoo, prompts, "args", "llama", 1,
                         settings(eos_ids=eos_ids, rm_batch_size=rm_batch_size))
    assert chunked == whole == [cut_at_first(row, set(eos_ids)) for row in unstopped]


@pytest.mark.parametrize("method", METHODS)
def test_shared_prefix_prefill_gives_the_tokens_of_a_full_prefill(zoo, prompts, method):
    shared = run_engine(zoo, prompts, method, "qwen2", 2, settings(method))
    unshared = run_engine(zoo, prompts, method, "qwen2", 2, settings(method, share_prefix=False))
    assert shared == unshared


@pytest.mark.parametrize("method", METHODS)
def test_each_question_decodes_as_it_would_alone(zoo, prompts, method):
    pref, base = prompts
    config = settings(method)
    alone = []
    for pref_ids, base_ids in zip(pref, base, strict=True):
        alone += run_engine(zoo, ([pref_ids], [base_ids]), method, "llama", 0, config)
    assert run_engine(zoo, prompts, method, "llama", 0, config) == alone
    reversed_batch = run_engine(zoo, (pref[::-1], base[::-1]), method, "llama", 0, config)
    assert reversed_batch == alone[::-1]


@pytest.mark.parametrize("method", METHODS)
def test_ignore_eos_decodes_every_step_past_the_eos(zoo, prompts, method):
    unstopped = run_engine(zoo, prompts, method, "llama", 0, settings(method, ignore_eos=True))
    eos_ids = early_stop_ids(unstopped)
    config = settings(method, eos_ids=eos_ids, ignore_eos=True)
    got = run_engine(zoo, prompts, method, "llama", 0, config)
    assert got == unstopped and all(len(row) == STEPS for row in got)
    assert any(set(eos_ids) & set(row[:-1]) for row in got)  # an EOS id mid-row, not an end
    assert got == run_reference(zoo, prompts, method, "llama", 0, config)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("weight", [0.5, 1.5, 3.0])
def test_implicit_pad_over_the_whole_vocabulary_is_linear_alignment_with_ratio_w_minus_1(
    zoo, tokenizer, prompts, family, weight
):
    pref, base = prompts
    model = zoo.decoder(family, 0)
    config = settings("implicit", weight=weight, topk=len(tokenizer))
    got = decode_pad_implicit(model, base, pref, config).token_ids
    expected = decode_two_prompts(model, pref, base, la_rule(weight - 1.0), STEPS, [EOS],
                                  PAD).token_ids
    assert got == expected


@pytest.mark.parametrize("method", METHODS)
def test_topk_mode_is_reproducible_under_a_seed(zoo, prompts, method):
    def sample(seed: int, temp: float = 5.0):
        config = settings(method, mode="topk", sample_temp=temp, ignore_eos=True)
        return run_engine(zoo, prompts, method, "llama", 0, config,
                          torch.Generator().manual_seed(seed))

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first
    greedy = run_engine(zoo, prompts, method, "llama", 0, settings(method, ignore_eos=True))
    assert first != greedy
    assert sample(7, temp=1e-4) == greedy  # a vanishing temperature is the argmax


def test_topk_mode_needs_a_generator(zoo, prompts):
    with pytest.raises(ValueError, match="Generator"):
        run_engine(zoo, prompts, "pad", "llama", 0, settings("pad", mode="topk"))


@torch.inference_mode()
def test_engine_first_tokens_follow_softmax_of_pad_scores_over_temperature(zoo, prompts):
    """Many copies of one prompt, one step: the first tokens' frequencies match
    softmax(score / temp) over the k candidates, scores computed here from the models."""
    prompt = prompts[0][1]
    model, persrm = zoo.decoder("llama", 0), zoo.persrm(0)
    k, copies = 5, 4000
    z = model(input_ids=torch.tensor([prompt])).logits[0, -1].float()
    u = persrm(input_ids=torch.tensor([prompt])).logits[0, -1].float()
    z_k, candidates = torch.topk(z, k)
    scores = pad_scores(z_k[None], u[candidates][None], 0.8)[0]
    temp = float(scores.max() - scores.min()) / 3  # a spread-out distribution
    config = settings("pad", topk=k, mode="topk", sample_temp=temp, max_new_tokens=1)
    firsts = decode_pad(model, persrm, [prompt] * copies, config,
                        torch.Generator().manual_seed(3)).token_ids
    counts = torch.tensor([sum(row == [c] for row in firsts) for c in candidates.tolist()])
    assert int(counts.sum()) == copies
    probs = torch.softmax(scores.double() / temp, -1)
    assert float(probs.min()) > 0.01
    assert chi_square(counts.double(), probs) < 30  # 4 degrees of freedom: p < 1e-5


def test_a_pad_id_candidate_is_rewarded_at_its_own_position(zoo, prompts):
    """transformers' sequence classifiers read the score at the last id that is not the pad id;
    the engine reads a candidate's reward at the candidate, pad id or not."""
    prompt = prompts[0][2]
    rm = zoo.reward_model(0)
    candidates = torch.tensor([[EOS, 11, 500]])  # the pad id first
    config = settings(topk=3)
    with torch.inference_mode():
        got = RewardGuide(rm, [prompt], config).values(candidates)[0]
        sequences = torch.tensor([prompt + [c] for c in candidates[0].tolist()])
        hidden = rm.base_model(input_ids=sequences).last_hidden_state[:, -1]
        at_last = rm.score(hidden)[:, 0]
        pooled = rm(input_ids=sequences).logits[:, 0]
    assert torch.allclose(got, at_last, atol=1e-4)
    assert torch.allclose(pooled[1:], at_last[1:], atol=1e-4)
    assert not torch.allclose(pooled[0], at_last[0], atol=1e-2)  # the pooling skips the pad id


# ----- errors ---------------------------------------------------------------------------------


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_reward_model_with_another_tokenizer_is_refused(zoo, tokenizer, prompts, tmp_path):
    from rm_helpers import build_tokenizer, tiny_llama_config
    from transformers import LlamaForSequenceClassification

    other = build_tokenizer(tmp_path / "other")
    with pytest.raises(UserError, match="must share one") as err:
        check_same_tokenizer(tokenizer, other)
    assert "reward model" in one_line(err)
    check_same_tokenizer(tokenizer, tokenizer)  # the same one passes
    small_rm = LlamaForSequenceClassification(tiny_llama_config(other, num_labels=1)).eval()
    with pytest.raises(UserError, match="share one tokenizer") as err:
        decode_args(zoo.decoder("llama", 0), small_rm, prompts[0], settings())
    one_line(err)


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_weight_is_refused(weight):
    with pytest.raises(UserError, match="finite") as err:
        settings(weight=weight)
    one_line(err)


@pytest.mark.parametrize("method", METHODS)
def test_topk_outside_one_to_vocabulary_size_is_refused(zoo, tokenizer, prompts, method):
    with pytest.raises(UserError, match="at least 1"):
        settings(method, topk=0)
    with pytest.raises(UserError, match="larger than the vocabulary") as err:
        run_engine(zoo, prompts, method, "llama", 0, settings(method, topk=len(tokenizer) + 1))
    one_line(err)


def test_bad_modes_and_temperatures_are_refused():
    with pytest.raises(UserError, match="unknown selection mode"):
        settings(mode="beam")
    with pytest.raises(UserError, match="sample_temp"):
        settings(mode="topk", sample_temp=0.0)
    with pytest.raises(UserError, match="EOS"):
        settings(eos_ids=())


def test_a_persrm_without_an_lm_head_is_refused(zoo, prompts):
    with pytest.raises(UserError, match="no LM head") as err:
        decode_pad(zoo.decoder("llama", 0), zoo.reward_model(0), prompts[0], settings("pad"))
    one_line(err)


def test_a_reward_model_that_is_not_a_one_label_classifier_is_refused(zoo, prompts):
    model = zoo.decoder("llama", 0)
    for not_a_reward_model in (zoo.persrm(0), zoo.reward_model(0, num_labels=2)):
        with pytest.raises(UserError, match="one-label sequence classifier") as err:
            decode_args(model, not_a_reward_model, prompts[0], settings())
        one_line(err)


def test_nan_rewards_raise_non_finite_scores_error(zoo, prompts):
    rm = zoo.reward_model(0)

    def poison(module, inputs, output):
        return torch.full_like(output, float("nan"))

    handle = rm.score.register_forward_hook(poison)
    try:
        with pytest.raises(NonFiniteScoresError, match="NaN"):
            decode_args(zoo.decoder("llama", 0), rm, prompts[0], settings())
    finally:
        handle.remove()
