"""CoSteer's rule (DecodingMethodsModels/rules/costeer.py): the ratio c_T, its closed form
against the T steps written literally from the docstring, the identity with Linear Alignment
when the SLM is the LLM, and forbidden tokens."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from DecodingMethodsModels.rules.combine import linear_alignment
from DecodingMethodsModels.rules.costeer import (
    costeer_closed_form,
    costeer_iterative,
    costeer_ratio,
    costeer_rule,
    on_one_model,
)


def literal_steps(base, pers, plain, T, alpha, beta, lam, eta):
    """The docstring's loop as written, every U_t kept and summed again (float64)."""
    b = torch.log_softmax(base.double(), -1)
    delta = torch.log_softmax(pers.double(), -1) - torch.log_softmax(plain.double(), -1)
    policy, utilities = b.clone(), []
    for t in range(1, T + 1):
        utilities.append(alpha * (policy - b) + beta * delta)
        numerator = t * lam * b + sum(utilities) + policy / eta
        policy = torch.log_softmax(numerator / (t * lam + 1 / eta), -1)
    return policy


def logits(seed, rows=3, vocab=50, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, vocab, generator=g) * scale for _ in range(3)]


def test_c20_at_the_defaults_is_1_7833():
    assert costeer_ratio(20, 2.0, 1.0, 2.0, 10.0) == pytest.approx(1.7833, abs=5e-5)
    assert costeer_ratio(0, 2.0, 1.0, 2.0, 10.0) == 0.0
    assert costeer_ratio(1, 2.0, 1.0, 2.0, 10.0) == pytest.approx(1 / 2.1)


GRID = list(itertools.product((0, 1, 5, 20, 60), (0.0, 1.0, 2.0, 3.0), (0.5, 1.0, 2.0),
                              (1.0, 2.0, 4.0), (1.0, 10.0)))


@pytest.mark.parametrize("T, alpha, beta, lam, eta", GRID)
def test_the_closed_form_is_the_literal_steps(T, alpha, beta, lam, eta):
    base, pers, plain = logits(T * 7 + int(alpha * 3 + beta * 5 + lam + eta))
    c = costeer_ratio(T, alpha, beta, lam, eta)
    if abs(c) > 1e4:
        pytest.skip("diverged past float32's resolution (alpha > lambda, large T)")
    want = literal_steps(base, pers, plain, T, alpha, beta, lam, eta)
    lp = [torch.log_softmax(x, -1) for x in (base, pers, plain)]
    closed = costeer_closed_form(*lp, ratio=c).double()
    steps = costeer_iterative(*lp, T, alpha, beta, lam, eta).double()
    tol = 2e-5 * (1 + abs(c))
    assert (closed - want).abs().max() < tol * 10
    assert (steps - want).abs().max() < tol * 10
    # and the ratio is the D-coefficient of the literal result, recovered by least squares
    delta = lp[1].double() - lp[2].double()
    residual = want - torch.log_softmax(base.double(), -1)
    centred = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731 (row constants drop out)
    fitted = (centred(residual) * centred(delta)).sum() / (centred(delta) ** 2).sum()
    assert float(fitted) == pytest.approx(c, rel=1e-6, abs=1e-6)


def test_the_ratio_tends_to_beta_over_lambda_minus_alpha():
    # the gap closes like T^(alpha / lambda - 1)
    assert costeer_ratio(400_000, 1.0, 1.0, 2.0, 10.0) == pytest.approx(1.0, rel=2e-3)
    assert costeer_ratio(4000, 0.5, 2.0, 2.0, 10.0) == pytest.approx(2 / 1.5, rel=2e-3)
    # alpha = lambda: grows like (beta / lambda) ln T
    grow = costeer_ratio(4000, 2.0, 1.0, 2.0, 10.0) - costeer_ratio(400, 2.0, 1.0, 2.0, 10.0)
    assert grow == pytest.approx(0.5 * math.log(10), rel=2e-2)


@pytest.mark.parametrize("T", [1, 20, 60])
def test_with_the_slm_the_llm_it_is_linear_alignment_with_ratio_c_minus_1(T):
    pers, plain, _ = (torch.log_softmax(x, -1) for x in logits(T))
    c = costeer_ratio(T, 2.0, 1.0, 2.0, 10.0)
    costeer = on_one_model(costeer_rule(T, 2.0, 1.0, 2.0, 10.0))(pers, plain)
    la = torch.log_softmax(linear_alignment(pers, plain, c - 1.0), -1)
    assert torch.allclose(costeer, la, atol=1e-5)
    assert torch.equal(costeer.argmax(-1), la.argmax(-1))


@pytest.mark.parametrize("solver", ["closed_form", "iterative"])
def test_forbidden_tokens_stay_forbidden_and_nothing_is_nan(solver):
    base, pers, plain = (torch.log_softmax(x, -1) for x in logits(5))
    base[0, 3] = pers[1, 4] = float("-inf")
    plain[2, 5] = pers[2, 5] = float("-inf")  # -inf - -inf
    out = costeer_rule(20, 2.0, 1.0, 2.0, 10.0, solver)(base, pers, plain)
    assert out[0, 3] == float("-inf") and out[1, 4] == float("-inf")
    assert not out.isnan().any()
    assert torch.isfinite(out).sum() == out.numel() - 3


def test_inputs_are_checked_and_never_modified():
    base, pers, plain = (torch.log_softmax(x, -1) for x in logits(6))
    kept = [x.clone() for x in (base, pers, plain)]
    costeer_rule(5, 2.0, 1.0, 2.0, 10.0, "iterative")(base, pers, plain)
    costeer_rule(5, 2.0, 1.0, 2.0, 10.0)(base, pers, plain)
    assert all(torch.equal(a, b) for a, b in zip(kept, (base, pers, plain), strict=True))
    with pytest.raises(ValueError, match=r"\(B, V\)"):
        costeer_closed_form(base, pers[:, :10], plain, 1.0)
    with pytest.raises(ValueError, match="float32"):
        costeer_closed_form(base.double(), pers, plain, 1.0)
    with pytest.raises(ValueError, match="lambda > 0"):
        costeer_ratio(20, 2.0, 1.0, 0.0, 10.0)
    with pytest.raises(ValueError, match="solver"):
        costeer_rule(20, 2.0, 1.0, 2.0, 10.0, "newton")


def test_the_k_table_gives_costeers_ratio_beside_amulets_k():
    from evals.study import analysis_k

    rows = analysis_k.k_table()
    for row in rows:
        c = costeer_ratio(row["T"], row["alpha"], 1.0, row["lambda"], row["eta"])
        assert row["costeer_c_T"] == c and row["costeer_la_ratio"] == c - 1.0
    at_20 = next(r for r in rows if r["swept"] == "T" and r["T"] == 20)
    assert at_20["costeer_c_T"] == pytest.approx(1.7833, abs=5e-5)
    assert "| CoSteer c_T | 0 | 1.783 |" in analysis_k.markdown_tables(rows)
