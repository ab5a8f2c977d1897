"""The one acceptance rule of two-prompt decoding on vLLM (the driver's and the server
client's), the sentinels' choice, the spec's checks and the bounded key ledger: pure Python,
no vLLM needed."""

from __future__ import annotations

import pytest

from DecodingMethodsModels.backends.vllm_pair_spec import (
    ACCEPTED,
    ANSWERS_DIFFER,
    OUT_OF_STEP,
    UNUSABLE,
    KeyLedger,
    PairSpec,
    check_spec,
    choose_sentinels,
    pair_verdict,
)

S, U = 90, 91


@pytest.mark.parametrize("pref, base, verdict", [
    ([5, 6, 2], [5, 6, 2], ACCEPTED),
    ([], [], ACCEPTED),
    ([5, S], [5, S], OUT_OF_STEP),  # equal answers that end on the sentinel: never kept
    ([5, 6], [S], OUT_OF_STEP),
    ([5, 6, 2], [5, 7, 2], ANSWERS_DIFFER),
    ([U], [U], UNUSABLE),
    ([5, U], [S], UNUSABLE),  # non-finite scores win: decoding again would give the same
])
def test_pair_kept_only_with_equal_answers_and_no_sentinel(pref, base, verdict):
    assert pair_verdict(pref, base, S, U) == verdict


def test_sentinels_prefer_rows_no_text_maps_to_then_unused_specials():
    # a padded output layer (Qwen-style): ids past the tokenizer's last token
    assert choose_sentinels(100, 90, [0, 1, 2], {2}) == (99, 98)
    # no padding: the highest special tokens not in use (SmolLM2: <empty_output>, then 15)
    assert choose_sentinels(100, 100, range(17), {0, 1, 2}) == (16, 15)
    # avoided ids are skipped wherever they sit
    assert choose_sentinels(100, 99, [16, 15, 14], {99, 16}) == (15, 14)
    # nothing special left: the vocabulary's last ids
    assert choose_sentinels(10, 10, [0], {0, 9}) == (8, 7)


def la_spec(**change) -> PairSpec:
    fields = dict(pair="k", role="pref", rule="la", params={"ratio": 2.0}, sentinel=S,
                  unusable=U)
    return PairSpec(**{**fields, **change})


def test_a_valid_spec_passes_and_a_greedy_request_is_required():
    check_spec(la_spec(), [2, S, U], 0.0)
    with pytest.raises(ValueError, match="greedy"):
        check_spec(la_spec(), [2, S, U], 0.7)
    with pytest.raises(ValueError, match="unusable token must be one of stop_token_ids"):
        check_spec(la_spec(), [2, S], 0.0)


def test_ledger_refuses_a_reused_key_and_role_and_stays_bounded():
    ledger = KeyLedger(size=3)
    ledger.admit(la_spec())
    ledger.admit(la_spec(role="base"))
    with pytest.raises(ValueError, match="already used"):
        ledger.admit(la_spec())
    for i in range(10):
        ledger.admit(la_spec(pair=f"other{i}"))
    assert len(ledger.seen) == 3


@pytest.mark.parametrize("change", [
    {"params": {"ratio": "2"}}, {"params": {"ratio": None}}, {"params": {"ratio": float("nan")}},
    {"params": {"ratio": True}}, {"params": [2.0]}, {"sampling": {"temperature": "hot"}},
    {"sampling": {"temperature": 1.0, "top_k": "5"}}, {"seed": 1.5}, {"pair": 7},
])
def test_a_field_of_the_wrong_kind_is_a_value_error_never_a_type_error(change):
    with pytest.raises(ValueError, match="pair spec"):
        check_spec(la_spec(**change), [2, S, U], 0.0)
