"""The two-prompt decode engine (DecodingMethodsModels/engines/prompt_rows.py) on tiny random
Llama, Qwen2 and Mistral models, against independent references: transformers' own greedy
`generate`, its classifier-free guidance, and a cache-free loop that re-encodes every sequence
at every step.
The last tests repeat the key equalities on the real embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

import pytest
import torch

from DecodingMethodsModels.engines.core import NonFiniteScoresError, shared_prefix_length
from DecodingMethodsModels.engines.prompt_rows import decode_two_prompts
from DecodingMethodsModels.prompts.amulet import encode_prompt, preference_sentence
from DecodingMethodsModels.rules.combine import amulet_ratio, amulet_rule, la_rule
from DecodingMethodsModels.rules.sampling import SamplingSettings

FAMILIES = ("llama", "qwen2", "mistral")
QUESTIONS = (
    "Why is the sky blue?",
    "Write a haiku about a long and winding road through the quiet hills after the rain.",
    "Hi",
)
EOS, PAD = 2, 2
STEPS = 12
# Weights of the tiny random models are scaled up so that their next-token distributions
# depend on the prompt and their top two scores are apart by far more than fp32 noise
# (checked: > 3e-3 at every step here, against differences of ~1e-5 between code paths).
SHARPEN = 10.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tiny_model_dirs) -> dict:
    from conftest import sharpened_models

    return sharpened_models(tiny_model_dirs, FAMILIES, SHARPEN)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """Preference and base prompt ids of three questions of clearly different lengths."""
    sentence = preference_sentence("creative")
    pref = [encode_prompt(tokenizer, q, sentence, True) for q in QUESTIONS]
    base = [encode_prompt(tokenizer, q, "", True) for q in QUESTIONS]
    assert len({len(p) for p in pref}) == len(QUESTIONS)
    return pref, base


def amulet(solver: str = "closed_form", T: int = 60, alpha: float = 2.0, lam: float = 2.0,
           eta: float = 10.0):
    return amulet_rule(T, alpha, lam, eta, solver)


def decode(model, pref, base, rule, steps=STEPS, eos_ids=(EOS,), drop_finished=True,
           share_prefix=True):
    return decode_two_prompts(
        model, pref, base, rule, steps, list(eos_ids), PAD, drop_finished=drop_finished,
        share_prefix=share_prefix,
    ).token_ids


@torch.inference_mode()
def hf_greedy(model, prompt: list[int], steps: int = STEPS, **kwargs) -> list[int]:
    """transformers' greedy decoding on one unpadded prompt: the new tokens, EOS included."""
    ids = torch.tensor([prompt])
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
        max_new_tokens=steps, eos_token_id=[EOS], pad_token_id=PAD, **kwargs,
    )
    return out[0, ids.shape[1]:].tolist()


@torch.inference_mode()
def last_logprobs(model, ids: list[int]) -> torch.Tensor:
    """fp32 log-probs of the next token after `ids`, one unpadded row, no cache: (1, V)."""
    out = model(input_ids=torch.tensor([ids]), use_cache=False)
    return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)


def reference_decode(model, pref, base, rule, steps=STEPS, eos_ids=(EOS,)) -> list[list[int]]:
    """The definition of two-prompt decoding, with nothing clever: per question and step, both
    full sequences are re-encoded from scratch, alone (no padding, no cache, no batch)."""
    outputs = []
    for pref_ids, base_ids in zip(pref, base, strict=True):
        generated: list[int] = []
        for _ in range(steps):
            scores = rule(last_logprobs(model, pref_ids + generated),
                          last_logprobs(model, base_ids + generated))  # (1, V)
            generated.append(int(scores.argmax(-1)))
            if generated[-1] in eos_ids:
                break
        outputs.append(generated)
    return outputs


def cut_at_first(ids: list[int], stops: set[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in stops:
            return ids[: position + 1]
    return ids


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("alpha", "lam", "eta"), [(2.0, 2.0, 10.0), (3.0, 2.0, 10.0)])
def test_amulet_iterative_equals_la_with_ratio_k(models, prompts, family, alpha, lam, eta):
    k = amulet_ratio(60, alpha, lam, eta)
    amulet_tokens = decode(models[family], *prompts, amulet("iterative", 60, alpha, lam, eta))
    la_tokens = decode(models[family], *prompts, la_rule(k))
    assert amulet_tokens == la_tokens
    # and the ratio matters: LA with its own default ratio decodes something else
    assert decode(models[family], *prompts, la_rule(2.0)) != amulet_tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_closed_form_and_iterative_solvers_give_the_same_tokens(models, prompts, family):
    closed = decode(models[family], *prompts, amulet("closed_form"))
    iterated = decode(models[family], *prompts, amulet("iterative"))
    assert closed == iterated
    assert all(len(row) == STEPS for row in closed)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("solver", ["closed_form", "iterative"])
def test_amulet_with_base_prompt_equal_to_pref_prompt_is_pref_greedy(models, prompts, family,
                                                                     solver):
    pref, _ = prompts
    got = decode(models[family], pref, pref, amulet(solver))
    assert got == [hf_greedy(models[family], p) for p in pref]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("solver", ["closed_form", "iterative"])
def test_amulet_with_zero_iterations_is_pref_greedy(models, prompts, family, solver):
    pref, base = prompts
    got = decode(models[family], pref, base, amulet(solver, T=0))
    expected = [hf_greedy(models[family], p) for p in pref]
    assert got == expected
    assert decode(models[family], pref, base, amulet(solver)) != expected  # T matters


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["la", "amulet"])
def test_cached_batched_engine_equals_cache_free_reference(models, prompts, family, method):
    rule = la_rule(2.0) if method == "la" else amulet("iterative")
    got = decode(models[family], *prompts, rule)
    assert got == reference_decode(models[family], *prompts, rule)


def stop_tokens(rows: list[list[int]]) -> list[tuple[int, int]]:
    """(token, step) for questions 0 and 1: a token question 0 produces from step 3 on and one
    question 1 produces from step 5 on, each the first of its kind in its row, seen by no other
    row before that row stops and never by question 2. Made EOS ids, they stop questions 0 and
    1 at two different steps while question 2 runs to the end."""
    for p0 in range(2, STEPS - 1):
        t0 = rows[0][p0]
        if t0 in rows[0][:p0] or t0 in rows[2]:
            continue
        for p1 in range(4, STEPS - 1):
            t1 = rows[1][p1]
            if (p1 != p0 and t1 not in rows[1][:p1] and t1 not in rows[2]
                    and t1 not in rows[0][: p0 + 1] and t0 not in rows[1][: p1 + 1]):
                return [(t0, p0), (t1, p1)]
    pytest.fail(f"no usable stop tokens in {rows}: choose other prompts or seeds")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("drop_finished", [True, False])
def test_stops_on_any_of_several_eos_ids(models, prompts, family, drop_finished):
    model = models[family]
    unstopped = decode(model, *prompts, amulet())
    (t0, p0), (t1, p1) = stop_tokens(unstopped)
    eos_ids = [EOS, t0, t1, 7]
    got = decode(model, *prompts, amulet(), eos_ids=eos_ids, drop_finished=drop_finished)
    assert got == [cut_at_first(row, set(eos_ids)) for row in unstopped]
    assert got[0] == unstopped[0][: p0 + 1] and got[0][-1] == t0
    assert got[1] == unstopped[1][: p1 + 1] and got[1][-1] == t1
    assert got[2] == unstopped[2] and len(got[2]) == STEPS


@pytest.mark.parametrize("drop_finished", [True, False])
def test_eos_as_first_token_ends_that_question_alone(models, prompts, drop_finished):
    model = models["qwen2"]
    unstopped = decode(model, *prompts, amulet())
    first = unstopped[0][0]
    assert all(first not in row for row in unstopped[1:])
    got = decode(model, *prompts, amulet(), eos_ids=(EOS, first), drop_finished=drop_finished)
    assert got == [[first], *unstopped[1:]]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("drop_finished", [True, False])
def test_mixed_length_batch_equals_each_prompt_alone(models, prompts, family, drop_finished):
    model = models[family]
    pref, base = prompts
    eos_ids = [EOS] + [t for t, _ in stop_tokens(decode(model, pref, base, amulet()))]
    alone = [decode(model, [p], [b], amulet(), eos_ids=eos_ids)[0]
             for p, b in zip(pref, base, strict=True)]
    batched = decode(model, pref, base, amulet(), eos_ids=eos_ids, drop_finished=drop_finished)
    assert batched == alone
    assert len({len(row) for row in batched}) == 3  # three questions end at three steps
    reversed_batch = decode(model, pref[::-1], base[::-1], amulet(), eos_ids=eos_ids,
                            drop_finished=drop_finished)
    assert reversed_batch == alone[::-1]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([[5, 6, 7, 8], [5, 6, 9], [5, 6, 7]], 2),
        ([[5, 6, 7], [5, 6, 7]], 2),  # identical rows keep their last token to encode
        ([[5], [5]], 0),
        ([[1, 2], [3, 2]], 0),
    ],
)
def test_shared_prefix_is_common_to_all_rows_and_leaves_every_row_a_token(rows, expected):
    assert shared_prefix_length(rows) == expected


def test_chat_prompts_share_their_system_header(prompts):
    pref, base = prompts
    shared = shared_prefix_length(pref + base)
    assert shared > 10
    assert len({tuple(row[:shared]) for row in pref + base}) == 1
    assert len({row[shared] for row in pref + base}) > 1


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["la", "amulet"])
def test_shared_prefix_prefill_gives_the_tokens_of_a_full_prefill(models, prompts, family,
                                                                   method):
    model = models[family]
    pref, base = prompts
    rule = la_rule(2.0) if method == "la" else amulet()
    shared = decode(model, pref, base, rule, steps=20)
    unshared = decode(model, pref, base, rule, steps=20, share_prefix=False)
    assert shared == unshared
    assert shared == reference_decode(model, pref, base, rule, steps=20)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("ratio", [2.0, 0.5])
def test_la_equals_transformers_classifier_free_guidance(models, prompts, family, ratio):
    model = models[family]
    pref, base = prompts
    for pref_ids, base_ids in zip(pref, base, strict=True):
        got = decode(model, [pref_ids], [base_ids], la_rule(ratio))[0]
        expected = hf_greedy(model, pref_ids, guidance_scale=1.0 + ratio,
                             negative_prompt_ids=torch.tensor([base_ids]))
        assert got == expected


def test_la_equals_transformers_classifier_free_guidance_up_to_the_eos(models, prompts):
    """With an EOS reached mid-way both keep it as their last token, and nothing after it."""
    model = models["qwen2"]
    pref, base = prompts
    unstopped = decode(model, [pref[0]], [base[0]], la_rule(2.0))[0]
    stop = unstopped[3]
    got = decode(model, [pref[0]], [base[0]], la_rule(2.0), eos_ids=(stop,))[0]
    ids = torch.tensor([pref[0]])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
            max_new_tokens=STEPS, eos_token_id=[stop], pad_token_id=PAD, guidance_scale=3.0,
            negative_prompt_ids=torch.tensor([base[0]]),
        )
    assert got == out[0, ids.shape[1]:].tolist() == cut_at_first(unstopped, {stop})
    assert got[-1] == stop and len(got) <= 4


def nan_in_row(row: int):
    def rule(pref_logprobs, base_logprobs):
        scores = la_rule(2.0)(pref_logprobs, base_logprobs).clone()
        if scores.shape[0] > row:
            scores[row, 11] = float("nan")
        return scores
    return rule


def test_nan_scores_raise_non_finite_scores_error(models, prompts):
    with pytest.raises(NonFiniteScoresError, match=r"rows \[1\]"):
        decode(models["llama"], *prompts, nan_in_row(1))


def test_nan_logits_from_the_model_raise_non_finite_scores_error(models, prompts):
    model = models["mistral"]

    def poison(module, inputs, output):
        return torch.full_like(output, float("nan"))

    handle = model.get_output_embeddings().register_forward_hook(poison)
    try:
        for rule in (la_rule(2.0), amulet("closed_form"), amulet("iterative")):
            with pytest.raises(NonFiniteScoresError, match="NaN"):
                decode(model, *prompts, rule)
    finally:
        handle.remove()
    assert decode(model, *prompts, la_rule(2.0))  # the hook is gone: decodes again


def test_unequal_numbers_of_prompts_raise_value_error(models, prompts):
    pref, base = prompts
    with pytest.raises(ValueError, match="same positive number"):
        decode(models["llama"], pref, base[:2], la_rule(2.0))
    with pytest.raises(ValueError, match="same positive number"):
        decode(models["llama"], [], [], la_rule(2.0))


# ----- the real embedded model ---------------------------------------------------------------

EMBEDDED_STEPS = 24


@pytest.fixture(scope="module")
def embedded_prompts(embedded_model):
    _, tokenizer = embedded_model
    question = "How can I stay focused while working from home?"
    pref = encode_prompt(tokenizer, question, preference_sentence("creative"), True)
    base = encode_prompt(tokenizer, question, "", True)
    return pref, base


@pytest.fixture(scope="module")
def embedded_amulet_tokens(embedded_model, embedded_prompts):
    model, tokenizer = embedded_model
    pref, base = embedded_prompts
    return decode_two_prompts(
        model, [pref], [base], amulet("closed_form"), EMBEDDED_STEPS,
        [tokenizer.eos_token_id], tokenizer.pad_token_id,
    ).token_ids[0]


def test_embedded_amulet_equals_transformers_cfg_with_scale_one_plus_k(
    embedded_model, embedded_prompts, embedded_amulet_tokens
):
    model, tokenizer = embedded_model
    pref, base = embedded_prompts
    k = amulet_ratio(60, 2.0, 2.0, 10.0)
    ids = torch.tensor([pref])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
            max_new_tokens=EMBEDDED_STEPS, guidance_scale=1.0 + k,
            negative_prompt_ids=torch.tensor([base]), eos_token_id=[tokenizer.eos_token_id],
            pad_token_id=tokenizer.pad_token_id,
        )
    assert embedded_amulet_tokens == out[0, ids.shape[1]:].tolist()
    assert len(embedded_amulet_tokens) > 4 and tokenizer.decode(embedded_amulet_tokens).strip()


def test_embedded_amulet_iterative_equals_closed_form(
    embedded_model, embedded_prompts, embedded_amulet_tokens
):
    model, tokenizer = embedded_model
    pref, base = embedded_prompts
    iterated = decode_two_prompts(
        model, [pref], [base], amulet("iterative"), EMBEDDED_STEPS,
        [tokenizer.eos_token_id], tokenizer.pad_token_id,
    ).token_ids[0]
    assert iterated == embedded_amulet_tokens


# --- row dropping on a sharded model, unusable scores when sampling, pad != EOS, bf16 --------


class _LayerOn:
    """A cache layer that sits on `device` and records the device of the index it is given."""

    def __init__(self, device: str):
        self.keys = torch.zeros(4, 1, 2, 3, device=device)
        self.received: list[torch.device] = []

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.received.append(indices.device)


def test_dropping_rows_hands_each_cache_layer_an_index_on_its_own_device():
    from types import SimpleNamespace

    from DecodingMethodsModels.engines.core import select_cache_rows

    layers = [_LayerOn("cpu"), _LayerOn("meta")]  # as if sharded over two devices
    select_cache_rows(SimpleNamespace(layers=layers), torch.tensor([0, 2]))
    assert [layer.received for layer in layers] == [[torch.device("cpu")],
                                                    [torch.device("meta")]]


def test_dropping_rows_keeps_the_selected_rows_of_a_real_cache():
    from transformers import DynamicCache

    from DecodingMethodsModels.engines.core import select_cache_rows

    cache = DynamicCache()
    keys = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 2, 3).contiguous()
    cache.update(keys, keys + 10, 0)
    select_cache_rows(cache, torch.tensor([1, 3]))
    assert cache.layers[0].keys[:, 0, 0, 0].tolist() == [1.0, 3.0]
    assert cache.layers[0].values[:, 0, 0, 0].tolist() == [11.0, 13.0]


def all_minus_inf_in_row(row: int):
    def rule(pref_logprobs, base_logprobs):
        scores = la_rule(2.0)(pref_logprobs, base_logprobs).clone()
        if scores.shape[0] > row:
            scores[row] = float("-inf")
        return scores
    return rule


@pytest.mark.parametrize("rule", [nan_in_row(1), all_minus_inf_in_row(1)])
def test_unusable_scores_while_sampling_raise_non_finite_scores_error(models, prompts, rule):
    pref, base = prompts
    sampling = SamplingSettings(do_sample=True, temperature=0.7, top_p=0.9)
    with pytest.raises(NonFiniteScoresError, match=r"rows \[1\]"):
        decode_two_prompts(models["llama"], pref, base, rule, STEPS, [EOS], PAD, sampling,
                           torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", FAMILIES)
def test_pad_id_other_than_eos_changes_no_token(models, prompts, family):
    model = models[family]
    pref, base = prompts
    eos_ids = [EOS] + [t for t, _ in stop_tokens(decode(model, pref, base, amulet()))]
    with_eos_pad = decode_two_prompts(model, pref, base, amulet(), STEPS, eos_ids, EOS).token_ids
    for pad in (0, 17):
        other = decode_two_prompts(model, pref, base, amulet(), STEPS, eos_ids, pad).token_ids
        assert other == with_eos_pad
    assert len({len(row) for row in with_eos_pad}) > 1  # rows end early: padding is exercised


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first step at which two token rows differ, or None if they are equal."""
    for step, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return step
    return None if len(a) == len(b) else min(len(a), len(b))


def bf16_ulp(logits: torch.Tensor) -> float:
    """The spacing of bfloat16 numbers (8 significant bits) at the largest |logit|."""
    exponent = torch.floor(torch.log2(logits.abs().max().float()))
    return float(2.0 ** (exponent - 7))


@torch.inference_mode()
def last_logits(model, ids: list[int]) -> torch.Tensor:
    """Next-token logits after `ids`, one unpadded row, no cache, upcast to fp32: (V,)."""
    return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].float()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_bf16_on_cpu_layouts_part_only_at_near_ties(models, prompts, family):
    """In bf16, exact token equality between computation layouts (batched or alone, with or
    without the shared-prefix cache) is not something the hardware guarantees: CPU matrix
    kernels round differently for different shapes and instruction sets (the qwen2 case
    parted at a step whose top two scores were 0.04 apart on an Intel Xeon with AVX-512 and
    not on an AMD EPYC). What holds on every CPU, and is checked here:
    - the same layout twice gives the same tokens;
    - two layouts give the same tokens until the first step at which they part, and there
      the two tokens' scores (from an uncached bf16 forward of the common prefix) are within
      bf16's rounding of each other: if every logit may be off by one bf16 spacing `u` at the
      largest logit, the Amulet score difference of two tokens, (1 + k) dx - k dy with x, y
      the preference and base logits, may move by 2 (1 + 2k) u.
    The exact equalities are asserted in float32, where they hold (the tests above)."""
    import copy

    model = copy.deepcopy(models[family]).to(torch.bfloat16)
    pref, base = prompts
    k = amulet_ratio(60, 2.0, 2.0, 10.0)
    rule = amulet()
    batched = decode(model, pref, base, rule)
    assert all(len(row) > 0 for row in batched)
    assert decode(model, pref, base, rule) == batched
    alone = [decode(model, [p], [b], rule)[0] for p, b in zip(pref, base, strict=True)]
    no_prefix = decode(model, pref, base, rule, share_prefix=False)
    gaps, rounding = [], []
    for layout in (alone, no_prefix):
        for row, (ours, theirs) in enumerate(zip(batched, layout, strict=True)):
            parted = first_difference(ours, theirs)
            for step in range(len(ours) if parted is None else parted + 1):
                x = last_logits(model, pref[row] + ours[:step])
                y = last_logits(model, base[row] + ours[:step])
                scores = rule(torch.log_softmax(x, -1)[None], torch.log_softmax(y, -1)[None])[0]
                tolerance = 2 * (1 + 2 * k) * max(bf16_ulp(x), bf16_ulp(y))
                top_two = scores.topk(2).values
                gaps.append(float(top_two[0] - top_two[1]))
                rounding.append(tolerance)
                if step == parted:
                    gap = abs(float(scores[ours[step]] - scores[theirs[step]]))
                    assert gap <= tolerance, (
                        f"row {row} parted at step {step} with a score gap of {gap:.3f}, more "
                        f"than bf16 rounding allows ({tolerance:.3f}): {ours} != {theirs}")
    # the check has teeth: most steps are decided by far more than the rounding tolerance
    decided = sum(gap > tol for gap, tol in zip(gaps, rounding, strict=True))
    assert decided > len(gaps) / 2, (decided, len(gaps))


# --- continuous batching --------------------------------------------------------------------

MANY_QUESTIONS = (
    "Hi",
    "Why is the sky blue?",
    "Write a haiku about a long and winding road through the quiet hills after the rain.",
    "Name three rivers.",
    "Explain, step by step and with an example for a curious child who loves trains and "
    "asks a lot of questions, how a steam engine turns heat into motion.",
    "Tea or coffee?",
    "What is the capital of France, and what is it famous for?",
)


def stopped_lengths(rows: list[list[int]], stops: set[int]) -> list[int]:
    return [len(cut_at_first(row, stops)) for row in rows]


def varied_stops(rows: list[list[int]]) -> list[int]:
    """EOS ids, taken from the rows' own tokens, that end the rows at as many different steps
    as a few greedy picks can reach."""
    stops = {EOS}
    for row in rows:
        for token in row[1:]:
            trial = stops | {token}
            if (len(set(stopped_lengths(rows, trial))) > len(set(stopped_lengths(rows, stops)))
                    and min(stopped_lengths(rows, trial)) > 1):
                stops = trial
                break
    return sorted(stops)


def continuous_finish_order(lengths: list[int], slots: int) -> list[int]:
    """When each question ends if a slot is refilled at once: a newcomer's first token comes
    from its prefill, then one token per step; live rows keep their admission order."""
    waiting, live, order = list(range(len(lengths))), [], []
    made = {}
    while waiting or live:
        for q in live:
            made[q] += 1
        order += [q for q in live if made[q] == lengths[q]]
        live = [q for q in live if made[q] < lengths[q]]
        newcomers, waiting = waiting[: slots - len(live)], waiting[slots - len(live):]
        for q in newcomers:
            made[q] = 1
        order += [q for q in newcomers if made[q] == lengths[q]]
        live += [q for q in newcomers if made[q] < lengths[q]]
    return order


def fixed_batch_finish_order(lengths: list[int], slots: int) -> list[int]:
    order = []
    for start in range(0, len(lengths), slots):
        batch = list(range(start, min(start + slots, len(lengths))))
        order += sorted(batch, key=lambda q: (lengths[q], q))
    return order


@pytest.fixture(scope="module")
def many_prompts(tokenizer):
    sentence = preference_sentence("creative")
    return ([encode_prompt(tokenizer, q, sentence, True) for q in MANY_QUESTIONS],
            [encode_prompt(tokenizer, q, "", True) for q in MANY_QUESTIONS])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch_size", [2, 3])
def test_continuous_batching_gives_each_question_its_batch_one_tokens(
    models, many_prompts, family, batch_size
):
    from DecodingMethodsModels.engines.prompt_rows import stream_two_prompts

    model = models[family]
    pref, base = many_prompts
    eos_ids = varied_stops(decode(model, pref, base, amulet(), steps=16))
    alone = [decode(model, [p], [b], amulet(), steps=16, eos_ids=eos_ids)[0]
             for p, b in zip(pref, base, strict=True)]
    assert len({len(row) for row in alone}) >= 3  # questions end at different steps
    # long and short questions interleaved, so a short one frees its slot early
    by_length = sorted(range(len(alone)), key=lambda i: len(alone[i]))
    order_in = [q for pair in zip(by_length[::-1], by_length, strict=True)
                for q in pair][: len(alone)]
    order_in = list(dict.fromkeys(order_in))
    lengths = [len(alone[q]) for q in order_in]
    expected = continuous_finish_order(lengths, batch_size)
    assert expected != fixed_batch_finish_order(lengths, batch_size)  # the data shows it
    order, got = [], {}
    for key, tokens in stream_two_prompts(model, [pref[q] for q in order_in],
                                          [base[q] for q in order_in], amulet(), 16, eos_ids,
                                          PAD, batch_size):
        order.append(key)
        got[order_in[key]] = tokens
    assert [got[i] for i in range(len(MANY_QUESTIONS))] == alone
    assert order == expected  # each admitted as soon as a slot freed


def test_continuous_batching_trims_the_columns_no_row_attends_to(models, many_prompts):
    from DecodingMethodsModels.engines import core
    from DecodingMethodsModels.engines.prompt_rows import stream_two_prompts

    first_column_used, widths = [], []
    original = core.trim_columns

    def recording(cache, mask):
        mask = original(cache, mask)
        first_column_used.append(bool(mask[:, 0].any()))
        widths.append(mask.shape[1] == cache.layers[0].keys.shape[2])
        return mask

    pref, base = many_prompts
    eos_ids = varied_stops(decode(models["llama"], pref, base, amulet(), steps=16))
    core.trim_columns = recording
    try:
        list(stream_two_prompts(models["llama"], pref, base, amulet(), 16, eos_ids, PAD, 2))
    finally:
        core.trim_columns = original
    assert first_column_used and all(first_column_used) and all(widths)


def test_a_stream_encodes_the_shared_prefix_once_for_all_admissions(models, many_prompts,
                                                                     monkeypatch):
    import functools

    from DecodingMethodsModels.engines.core import shared_prefix_length
    from DecodingMethodsModels.engines.prompt_rows import stream_two_prompts

    model = models["llama"]
    pref, base = many_prompts
    one_row_inputs = []  # only the prefix is ever encoded alone: a step has two rows or more
    original = model.forward

    @functools.wraps(original)
    def recording(*args, **kwargs):
        if kwargs["input_ids"].shape[0] == 1:
            one_row_inputs.append(kwargs["input_ids"].shape[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording)
    got = dict(stream_two_prompts(model, pref, base, amulet(), 16, [EOS], PAD, 2))
    assert len(got) == len(pref)
    assert one_row_inputs == [shared_prefix_length(pref + base)] and one_row_inputs[0] > 20
