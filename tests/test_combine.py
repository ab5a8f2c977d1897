"""Pure math of LA and Amulet (DecodingMethodsModels/rules/combine.py) against formulas written out
literally from the paper's Algorithm 1 and the docstrings."""

from __future__ import annotations

import math

import pytest
import torch

from DecodingMethodsModels.rules.combine import (
    amulet_closed_form,
    amulet_iterative,
    amulet_ratio,
    amulet_rule,
    contrast,
    la_rule,
    linear_alignment,
)

NEG_INF = float("-inf")
B, V = 3, 64

# (T, alpha, lambda, eta): T = 0 and 1, alpha < / = / > lambda, the defaults, a small eta.
GRID = [
    (T, alpha, lam, eta)
    for T in (0, 1, 7, 60)
    for alpha, lam in ((2.0, 2.0), (3.0, 2.0), (1.0, 2.0), (0.0, 1.5))
    for eta in (10.0, 0.01)
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_logprobs(seed: int, rows: int = B, vocab: int = V) -> tuple[torch.Tensor, torch.Tensor]:
    """A (pref, base) pair of fp32 (B, V) log-prob tensors, spread like real LM outputs."""
    gen = torch.Generator().manual_seed(seed)
    pref = torch.log_softmax(3.0 * torch.randn(rows, vocab, generator=gen), dim=-1)  # (B, V)
    base = torch.log_softmax(3.0 * torch.randn(rows, vocab, generator=gen), dim=-1)  # (B, V)
    return pref, base


def literal_ratio(T: int, alpha: float, lam: float, eta: float) -> float:
    """The docstring recursion, index for index: k_1 = 0, ..., return k_{T+1}."""
    k = {1: 0.0}
    for t in range(1, T + 1):
        mean = sum(k[s] for s in range(1, t + 1)) / t
        k[t + 1] = (alpha * (1 + mean) + k[t] / (eta * t)) / (lam + 1 / (eta * t))
    return k[T + 1]


def literal_ftrl(pref: torch.Tensor, base: torch.Tensor, T: int, alpha: float, lam: float,
                 eta: float) -> torch.Tensor:
    """The paper's FTRL update in float64 with the whole history kept, (B, T+1, V), and
    Q_1..Q_t re-summed at every t, as the reference code does; log_softmax skipped at t = T."""
    x1, b = pref.double(), base.double()  # (B, V)
    history = x1.unsqueeze(1)  # (B, 1, V): x_1
    for t in range(1, T + 1):
        q = alpha * (history - b.unsqueeze(1))  # (B, t, V): Q_1..Q_t
        x_t = history[:, -1]  # (B, V)
        x_next = (lam * x1 + q.sum(dim=1) / t + x_t / (eta * t)) / (lam + 1 / (eta * t))
        if t < T:
            x_next = torch.log_softmax(x_next, dim=-1)
        history = torch.cat([history, x_next.unsqueeze(1)], dim=1)  # (B, t+1, V)
    return torch.log_softmax(history[:, -1], dim=-1)


def fp32_tolerance(reference: torch.Tensor) -> float:
    """Absolute error allowed for fp32 arithmetic on values of this magnitude."""
    return 4e-6 * (1.0 + reference.abs().max().item())


@pytest.mark.parametrize(("T", "alpha", "lam", "eta"), GRID)
def test_iterative_equals_closed_form_log_probs(T, alpha, lam, eta):
    pref, base = random_logprobs(T + int(10 * alpha))
    k = amulet_ratio(T, alpha, lam, eta)
    closed = amulet_closed_form(pref, base, k)
    iterated = amulet_iterative(pref, base, T, alpha, lam, eta)
    torch.testing.assert_close(iterated, closed, rtol=0, atol=fp32_tolerance(closed))
    assert torch.equal(iterated.argmax(-1), closed.argmax(-1))


@pytest.mark.parametrize(("T", "alpha", "lam", "eta"), GRID)
def test_iterative_equals_literal_full_history_ftrl(T, alpha, lam, eta):
    pref, base = random_logprobs(100 + T)
    expected = literal_ftrl(pref, base, T, alpha, lam, eta)
    got = amulet_iterative(pref, base, T, alpha, lam, eta)
    assert got.dtype == torch.float32 and got.shape == (B, V)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=fp32_tolerance(expected))


@pytest.mark.parametrize(("T", "alpha", "lam", "eta"), GRID)
def test_ratio_matches_docstring_recursion(T, alpha, lam, eta):
    assert amulet_ratio(T, alpha, lam, eta) == pytest.approx(
        literal_ratio(T, alpha, lam, eta), rel=1e-12, abs=1e-12
    )


def test_ratio_known_values():
    assert round(amulet_ratio(60, 2.0, 2.0, 10.0), 4) == 4.6487
    assert round(amulet_ratio(60, 3.0, 2.0, 10.0), 2) == 23.03
    assert amulet_ratio(1, 2.0, 2.0, 10.0) == pytest.approx(2.0 / 2.1)


@pytest.mark.parametrize(
    ("alpha", "lam", "eta"), [(2.0, 2.0, 10.0), (3.0, 2.0, 0.5), (0.0, 1.0, 1.0)]
)
def test_ratio_is_zero_without_iterations(alpha, lam, eta):
    assert amulet_ratio(0, alpha, lam, eta) == 0.0


@pytest.mark.parametrize(("alpha", "lam"), [(1.0, 2.0), (1.0, 3.0), (0.5, 2.0)])
def test_ratio_converges_to_alpha_over_lambda_minus_alpha_when_alpha_below_lambda(alpha, lam):
    limit = alpha / (lam - alpha)
    values = [amulet_ratio(T, alpha, lam, 10.0) for T in (10, 1_000, 100_000)]
    assert values == sorted(values) and values[-1] < limit  # approaches from below
    assert values[-1] == pytest.approx(limit, rel=5e-3)


def test_ratio_grows_like_log_T_when_alpha_equals_lambda():
    growth = amulet_ratio(100_000, 2.0, 2.0, 10.0) - amulet_ratio(10_000, 2.0, 2.0, 10.0)
    assert growth == pytest.approx(math.log(10.0), abs=1e-2)


@pytest.mark.parametrize(
    ("T", "alpha", "lam", "eta"),
    [(-1, 2.0, 2.0, 10.0), (60, -0.1, 2.0, 10.0), (60, 2.0, 0.0, 10.0), (60, 2.0, 2.0, 0.0),
     (60, 2.0, 2.0, -1.0)],
)
def test_ratio_rejects_illegal_hyperparameters(T, alpha, lam, eta):
    with pytest.raises(ValueError, match="amulet_ratio needs"):
        amulet_ratio(T, alpha, lam, eta)


@pytest.mark.parametrize("ratio", [0.0, 2.0, 4.6487])
def test_linear_alignment_is_the_literal_formula(ratio):
    pref, base = random_logprobs(7)
    expected = pref + ratio * (pref - base)
    torch.testing.assert_close(linear_alignment(pref, base, ratio), expected)
    torch.testing.assert_close(la_rule(ratio)(pref, base), expected)


def test_closed_form_is_log_softmax_of_linear_alignment_with_ratio():
    pref, base = random_logprobs(8)
    k = amulet_ratio(60, 2.0, 2.0, 10.0)
    expected = torch.log_softmax(pref + k * (pref - base), dim=-1)
    torch.testing.assert_close(amulet_closed_form(pref, base, k), expected)


def test_linear_alignment_with_ratio_zero_is_preference_decoding():
    pref, base = random_logprobs(9)
    assert torch.equal(linear_alignment(pref, base, 0.0), pref)


def test_amulet_rule_solvers_agree():
    pref, base = random_logprobs(10)
    closed = amulet_rule(60, 2.0, 2.0, 10.0, "closed_form")(pref, base)
    iterated = amulet_rule(60, 2.0, 2.0, 10.0, "iterative")(pref, base)
    torch.testing.assert_close(iterated, closed, rtol=0, atol=fp32_tolerance(closed))


def test_amulet_rule_rejects_unknown_solver():
    with pytest.raises(ValueError, match="unknown Amulet solver"):
        amulet_rule(60, 2.0, 2.0, 10.0, "newton")


def test_functions_never_modify_their_inputs():
    pref, base = random_logprobs(11)
    pref[0, 3] = NEG_INF
    base[1, 4] = NEG_INF
    pref_copy, base_copy = pref.clone(), base.clone()
    contrast(pref, base)
    linear_alignment(pref, base, 2.0)
    amulet_closed_form(pref, base, 4.6)
    amulet_iterative(pref, base, 5, 2.0, 2.0, 10.0)
    assert torch.equal(pref, pref_copy) and torch.equal(base, base_copy)


def all_rules():
    k = amulet_ratio(60, 2.0, 2.0, 10.0)
    return {
        "la": la_rule(2.0),
        "amulet_closed_form": lambda p, b: amulet_closed_form(p, b, k),
        "amulet_iterative": lambda p, b: amulet_iterative(p, b, 60, 2.0, 2.0, 10.0),
        "amulet_diverging": lambda p, b: amulet_iterative(p, b, 60, 3.0, 2.0, 10.0),
    }


def test_contrast_of_two_minus_infinities_is_zero():
    pref, base = random_logprobs(12)
    pref[:, 5] = NEG_INF
    base[:, 5] = NEG_INF
    diff = contrast(pref, base)
    assert not torch.isnan(diff).any()
    assert torch.equal(diff[:, 5], torch.zeros(B))


@pytest.mark.parametrize("rule", list(all_rules()))
def test_minus_infinity_in_both_prompts_gives_no_nan(rule):
    pref, base = random_logprobs(13)
    pref[:, 5] = NEG_INF
    base[:, 5] = NEG_INF
    scores = all_rules()[rule](pref, base)
    assert not torch.isnan(scores).any()
    assert torch.isneginf(scores[:, 5]).all()


@pytest.mark.parametrize("rule", list(all_rules()))
def test_tokens_the_preference_prompt_forbids_stay_minus_infinity_and_never_win(rule):
    pref, base = random_logprobs(14)
    # forbid, per row, the token the rule would otherwise pick, and make the base prompt
    # hate it too, so that the contrast alone would push it to the top
    favourite = all_rules()[rule](pref, base).argmax(-1)  # (B,)
    rows = torch.arange(B)
    pref[rows, favourite] = NEG_INF
    base[rows, favourite] = -80.0
    pref[0, :] = NEG_INF  # row 0: one allowed token left
    pref[0, 9] = 0.0
    scores = all_rules()[rule](pref, base)
    assert not torch.isnan(scores).any()
    assert torch.isneginf(scores[torch.isneginf(pref)]).all()
    choice = scores.argmax(-1)
    assert not torch.isneginf(pref[rows, choice]).any()
    assert choice[0].item() == 9


@pytest.mark.parametrize("rule", list(all_rules()))
def test_token_only_the_base_prompt_forbids_wins_without_nan(rule):
    # log p_pref - log p_base = +inf for it: every rule must rank it first, none may give NaN
    pref, base = random_logprobs(15)
    base[:, 17] = NEG_INF
    scores = all_rules()[rule](pref, base)
    assert not torch.isnan(scores).any()
    assert (scores.argmax(-1) == 17).all()


def bad_pairs():
    good = torch.zeros(B, V)
    return {
        "one_dim": (torch.zeros(V), torch.zeros(V)),
        "three_dim": (torch.zeros(B, 1, V), torch.zeros(B, 1, V)),
        "vocab_mismatch": (good, torch.zeros(B, V + 1)),
        "batch_mismatch": (good, torch.zeros(B + 1, V)),
    }


def callers():
    return {
        "contrast": lambda p, b: contrast(p, b),
        "linear_alignment": lambda p, b: linear_alignment(p, b, 2.0),
        "amulet_closed_form": lambda p, b: amulet_closed_form(p, b, 4.6),
        "amulet_iterative": lambda p, b: amulet_iterative(p, b, 3, 2.0, 2.0, 10.0),
    }


@pytest.mark.parametrize("func", list(callers()))
@pytest.mark.parametrize("case", list(bad_pairs()))
def test_wrong_shapes_raise_value_error_naming_the_layout(func, case):
    pref, base = bad_pairs()[case]
    with pytest.raises(ValueError, match=r"\(B, V\)"):
        callers()[func](pref, base)


@pytest.mark.parametrize("func", list(callers()))
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_non_fp32_log_probs_raise_value_error_naming_the_layout(func, dtype):
    pref, base = random_logprobs(16)
    layout = rf"float32 \(B, V\) .* got {dtype} and torch.float32"
    with pytest.raises(ValueError, match=layout):
        callers()[func](pref.to(dtype), base)
    with pytest.raises(ValueError, match=r"float32 \(B, V\)"):
        callers()[func](pref, base.to(dtype))
