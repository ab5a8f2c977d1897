"""A fair comparison: every method decodes with exactly the command line's settings, whatever
the checkpoint's own generation config says, and the opt-in penalties mean the same thing for
`model.generate` (base, pref, beam) as for the two-prompt engine (la, amulet)."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import (
    OPINIONATED_GENERATION,
    gen_args,
    main_in_process,
    opinionated_model,
    run_files,
    sensitive_model,
)
from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

from DecodingMethodsModels.rules.penalties import (
    Penalties,
    apply_penalties,
    ban_repeated_ngrams,
    banned_ngram_tokens,
    penalise_repeats,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
METHODS = ("base", "pref", "beam", "la", "amulet")


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model_dirs):
    """(plain, opinionated): the same weights, the second with a generation config that sets
    sampling defaults, a repetition penalty and an n-gram ban."""
    return (sensitive_model(tmp_path_factory, tiny_model_dirs),
            opinionated_model(tmp_path_factory, tiny_model_dirs))


def responses(out, model, method: str) -> list[str]:
    final, _ = run_files(out, model, method)
    return [r["response"] for r in json.loads(final.read_text())]


def run_all(model, data, out, *extra: str) -> tuple[dict[str, list[str]], str]:
    """pref, base, beam, amulet and LA with ratio 0 (the same decoding as pref, by the engine)."""
    args = gen_args(model, data, out, "--limit", "6", "--num_beams", "2", "--max_new_tokens",
                    "24", *extra, method=",".join(METHODS))
    code, err = main_in_process([*args, "--reinforce_ratio", "0"])
    assert code == 0, err
    return {m: responses(out, model, m) for m in METHODS}, err


def test_checkpoint_generation_config_reaches_no_method(models, data, tmp_path):
    plain, opinionated = models
    with_config, err = run_all(opinionated, data, tmp_path / "opinionated")
    without, _ = run_all(plain, data, tmp_path / "plain")
    assert with_config == without  # every method, not only the engine's
    assert with_config["pref"] == with_config["la"]
    assert "repetition_penalty=1.5" in err and "no method uses them" in err


def test_model_generation_config_opt_in_applies_penalties_to_every_method_alike(
    models, data, tmp_path
):
    plain, opinionated = models
    adopted, _ = run_all(opinionated, data, tmp_path / "adopted", "--use_model_generation_config")
    given, _ = run_all(plain, data, tmp_path / "given", "--repetition_penalty", "1.5",
                       "--no_repeat_ngram_size", "3")
    neutral, _ = run_all(plain, data, tmp_path / "neutral")
    assert adopted == given
    assert adopted["pref"] == adopted["la"]
    assert adopted["pref"] != neutral["pref"] and adopted["amulet"] != neutral["amulet"]
    _, directory = run_files(tmp_path / "adopted", opinionated, "amulet")
    meta = json.loads((directory / "amulet.meta.json").read_text())
    generation = meta["generation"]
    assert generation["repetition_penalty"] == 1.5 and generation["no_repeat_ngram_size"] == 3
    assert generation["checkpoint_settings_applied"] == [
        "no_repeat_ngram_size", "repetition_penalty"]
    assert meta["fingerprint"]["use_model_generation_config"] is True


def test_opinionated_model_ships_the_settings_it_is_meant_to(models):
    from transformers import GenerationConfig

    own = GenerationConfig.from_pretrained(models[1]).to_diff_dict()
    assert {k: own[k] for k in OPINIONATED_GENERATION} == OPINIONATED_GENERATION


# --- the pure penalties, against their formulas and transformers' own processors -----------


def test_repetition_penalty_is_the_ctrl_formula_on_seen_tokens_only():
    scores = torch.tensor([[-2.0, 3.0, -0.5, 1.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = penalise_repeats(scores, seen, 2.0)
    assert out.tolist() == [[-4.0, 1.5, -0.5, 1.0]]


def test_penalties_equal_transformers_processors_on_log_probs():
    torch.manual_seed(0)
    scores = torch.log_softmax(torch.randn(3, 50), dim=-1)
    contexts = [[1, 4, 5, 1, 4, 7, 1, 4], [9, 9, 9, 9], [3, 2, 8, 11, 12, 3, 2]]
    for penalty, n in ((1.3, 0), (1.0, 2), (1.7, 3)):
        ours = apply_penalties(scores, contexts, Penalties(penalty, n))
        theirs = scores.clone()
        for row, context in enumerate(contexts):
            ids = torch.tensor([context])
            one = scores[row: row + 1]
            if penalty != 1.0:
                one = RepetitionPenaltyLogitsProcessor(penalty)(ids, one)
            if n:
                one = NoRepeatNGramLogitsProcessor(n)(ids, one)
            theirs[row] = one[0]
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("context, n, banned", [
    ([5, 6, 7, 5, 6], 3, [7]),  # "5 6" was followed by 7
    ([5, 6, 5, 6, 5], 2, [6, 6]),  # "5" was followed by 6 twice
    ([1, 2, 3], 4, []),  # too short for a 4-gram
    ([4, 4, 4], 1, [4, 4, 4]),  # n = 1 bans every seen token
])
def test_banned_ngram_tokens_by_hand(context, n, banned):
    assert banned_ngram_tokens(context, n) == banned


def test_ngram_ban_sets_banned_tokens_to_minus_infinity_and_keeps_the_rest():
    scores = torch.zeros(2, 8)
    out = ban_repeated_ngrams(scores, [[5, 6, 7, 5, 6], [1]], 3)
    assert torch.isneginf(out[0, 7]) and torch.isfinite(out[0, :7]).all()
    assert torch.isfinite(out[1]).all()
