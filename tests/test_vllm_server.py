"""The pairing processor behind vLLM's OpenAI-compatible server: the pair spec as a JSON string
(`vllm_xargs` holds no nested objects)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from vllm_helpers import require_vllm

require_vllm()

from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate  # noqa: E402

from DecodingMethodsModels.backends import vllm_pairing  # noqa: E402
from DecodingMethodsModels.backends.vllm_pairing import (  # noqa: E402
    PairedRuleProcessor,
    PairSpec,
    spec_of,
)
from DecodingMethodsModels.rules.combine import la_rule  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = PairSpec(pair="q7", role="base", rule="amulet", sentinel=16, seed=3,
                params={"iterations": 5, "alpha": 2.0, "player_lambda": 2.0, "eta": 10.0,
                        "solver": "closed_form"})


# ----- the spec as a JSON string, without a server ------------------------------------------


def test_spec_read_from_a_dict_or_its_json_string():
    assert spec_of(SPEC.as_extra_args()) == SPEC
    assert spec_of(SPEC.as_xargs()) == SPEC
    assert spec_of({"dmm": json.dumps(asdict(SPEC))}) == SPEC
    assert spec_of(None) is None and spec_of({"other": 1}) is None


@pytest.mark.parametrize("value, message", [
    ("{not json", "not valid JSON"),
    (json.dumps([1, 2]), "must be a pair spec object"),
    (7, "must be a pair spec object"),
    (json.dumps({"pair": "q", "role": "pref"}), "not a pair spec"),
])
def test_bad_spec_is_a_clear_value_error(value, message):
    with pytest.raises(ValueError, match=message):
        spec_of({"dmm": value})
    params = SamplingParams(temperature=0.0, stop_token_ids=[16], extra_args={"dmm": value})
    with pytest.raises(ValueError, match=message):
        PairedRuleProcessor.validate_params(params)


def test_processor_pairs_rows_whose_spec_is_a_json_string():
    vllm_pairing.OUT_OF_STEP.clear()
    processor = PairedRuleProcessor(None, torch.device("cpu"), False)
    added = []
    for row, role in enumerate(("pref", "base")):
        xargs = PairSpec(pair="q", role=role, rule="la", params={"ratio": 2.0},
                         sentinel=2).as_xargs()
        params = SamplingParams(temperature=0.0, stop_token_ids=[2], extra_args=xargs)
        PairedRuleProcessor.validate_params(params)
        added.append((row, params, [5 + row], []))
    processor.update_state(BatchUpdate(batch_size=2, removed=[], added=added, moved=[]))
    torch.manual_seed(0)
    logits = torch.randn(2, 12)
    pref, base = (torch.log_softmax(row.unsqueeze(0), dim=-1) for row in logits)
    want = int(la_rule(2.0)(pref, base).argmax())
    out = processor.apply(logits)
    assert (torch.isfinite(out).sum(dim=-1) == 1).all()
    assert out.argmax(dim=-1).tolist() == [want, want]
    assert not vllm_pairing.OUT_OF_STEP
