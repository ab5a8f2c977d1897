"""Token choice (DecodingMethodsModels/rules/sampling.py): the warping equals transformers' warpers,
sampling draws from the warped softmax, and unusable rows never reach torch.multinomial."""

from __future__ import annotations

import pytest
import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from DecodingMethodsModels.rules.sampling import (
    SamplingSettings,
    choose_tokens,
    unusable_rows,
    warp_scores,
)


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, None, 1.0), (0.7, None, 0.95), (0.7, 20, 1.0), (1.3, 50, 0.8), (0.5, 5, 0.5),
    (1.0, None, 0.3),
])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warping_equals_transformers_warpers_on_random_scores(temperature, top_k, top_p, seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.log_softmax(torch.randn(4, 300, generator=generator) * 3, dim=-1)
    ours = warp_scores(scores, SamplingSettings(True, temperature, top_k, top_p))
    theirs = TemperatureLogitsWarper(temperature)(None, scores.clone())
    if top_k is not None:
        theirs = TopKLogitsWarper(top_k)(None, theirs)
    if top_p < 1.0:
        theirs = TopPLogitsWarper(top_p)(None, theirs)
    assert torch.equal(torch.isneginf(ours), torch.isneginf(theirs))
    kept = torch.isfinite(ours)
    assert torch.allclose(ours[kept], theirs[kept], rtol=0, atol=1e-6)


def test_sampling_draws_from_the_softmax_of_the_warped_scores():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    settings = SamplingSettings(True, 1.0, None, 0.9)  # drops the 5% token: 0.5+0.3+0.15 >= 0.9
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([choose_tokens(scores, settings, generator) for _ in range(20000)])
    freq = torch.bincount(draws.flatten(), minlength=4).float() / draws.numel()
    expected = torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95
    assert freq[3] == 0
    assert torch.allclose(freq, expected, atol=0.015)


def test_seeded_sampling_repeats_itself():
    scores = torch.randn(3, 100, generator=torch.Generator().manual_seed(5))
    settings = SamplingSettings(True, 0.7, None, 0.95)

    def draw():
        generator = torch.Generator().manual_seed(11)
        return [choose_tokens(scores, settings, generator).tolist() for _ in range(5)]

    assert draw() == draw()


def test_unusable_rows_are_nan_or_without_any_finite_score():
    scores = torch.zeros(4, 5)
    scores[1, 2] = float("nan")
    scores[2] = float("-inf")
    scores[3, :4] = float("-inf")  # one finite score left: usable
    assert unusable_rows(scores).tolist() == [False, True, True, False]


def test_unusable_rows_never_reach_multinomial():
    scores = torch.zeros(3, 5)
    scores[0] = float("nan")
    scores[2] = float("-inf")
    settings = SamplingSettings(True, 0.7, 3, 0.9)
    tokens = choose_tokens(scores, settings, torch.Generator().manual_seed(0))  # no error
    assert tokens.shape == (3,)
