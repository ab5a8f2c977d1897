"""Never a wrong token: the pairing processor's bookkeeping on hand-made batch updates, and
pairs forced out of step inside a real engine (a partner arriving a step late, chunked
prefill with preemption under a small KV cache, too few retries) are detected and decoded
again, giving the hf backend's tokens, or stop with a one-line error naming the setting."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from vllm_helpers import (
    build_sharp_model,
    hf_tokens,
    kept,
    prompts,
    require_vllm,
    vllm_tokens,
)

require_vllm()

from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402

from DecodingMethodsModels.backends import vllm_pairing  # noqa: E402
from DecodingMethodsModels.backends.vllm_pairing import (  # noqa: E402
    PairedRuleProcessor,
    PairSpec,
)
from DecodingMethodsModels.errors import UserError  # noqa: E402
from DecodingMethodsModels.pipeline.methods import DecodeSettings  # noqa: E402
from DecodingMethodsModels.rules.combine import la_rule  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SENTINEL, VOCAB = 2, 12


def params(key: str, role: str, **spec) -> SamplingParams:
    pair = PairSpec(pair=key, role=role, rule="la", params={"ratio": 2.0}, sentinel=SENTINEL,
                    **spec)
    return SamplingParams(temperature=0.0, stop_token_ids=[SENTINEL],
                          extra_args=pair.as_extra_args())


def update(added=(), removed=(), moved=(), size=0) -> BatchUpdate:
    return BatchUpdate(batch_size=size, removed=list(removed), added=list(added),
                       moved=list(moved))


def forced(logits: torch.Tensor) -> list[int]:
    """The one token left finite in each row."""
    assert bool((torch.isfinite(logits).sum(dim=-1) == 1).all())
    return logits.argmax(dim=-1).tolist()


def la_token(pref_row: torch.Tensor, base_row: torch.Tensor) -> int:
    pref = torch.log_softmax(pref_row.unsqueeze(0), dim=-1)
    base = torch.log_softmax(base_row.unsqueeze(0), dim=-1)
    return int(la_rule(2.0)(pref, base).argmax())


def test_pair_forced_to_rule_token_through_moves_and_swaps():
    vllm_pairing.OUT_OF_STEP.clear()
    processor = PairedRuleProcessor(None, torch.device("cpu"), False)
    out_a, out_b = [], []
    processor.update_state(update(added=[(0, params("q", "pref"), [5], out_a),
                                         (3, params("q", "base"), [6], out_b)], size=4))
    processor.update_state(update(moved=[(3, 1, MoveDirectionality.UNIDIRECTIONAL)]))
    processor.update_state(update(moved=[(0, 1, MoveDirectionality.SWAP)]))  # base 0, pref 1
    torch.manual_seed(0)
    logits = torch.randn(2, VOCAB)
    want = la_token(logits[1].clone(), logits[0].clone())
    assert forced(processor.apply(logits)) == [want, want]
    assert not vllm_pairing.OUT_OF_STEP


def test_partner_absent_or_behind_gets_sentinel_and_is_recorded():
    vllm_pairing.OUT_OF_STEP.clear()
    processor = PairedRuleProcessor(None, torch.device("cpu"), False)
    processor.update_state(update(added=[(0, params("alone", "pref"), [5], [])], size=1))
    assert forced(processor.apply(torch.randn(1, VOCAB))) == [SENTINEL]
    assert vllm_pairing.OUT_OF_STEP == {"alone"}
    processor.update_state(update(removed=[0], added=[(0, params("late", "pref"), [5], [7]),
                                                      (1, params("late", "base"), [6], [])]))
    assert forced(processor.apply(torch.randn(2, VOCAB))) == [SENTINEL, SENTINEL]
    assert "late" in vllm_pairing.OUT_OF_STEP


def test_validate_params_refuses_a_sentinel_that_does_not_stop():
    bad = params("q", "pref")
    bad.stop_token_ids = []
    with pytest.raises(ValueError, match="sentinel"):
        PairedRuleProcessor.validate_params(bad)


# ----- out-of-step pairs inside a real engine ----------------------------------------------


class LateBase:
    """An engine whose first attempt of every pair gets its base request one step late (an
    arrival race)."""

    def __init__(self, engine):
        self.engine, self.held = engine, []

    def add_request(self, request_id, prompt, params):
        if "-a0-base" in request_id:
            self.held.append((request_id, prompt, params))
        else:
            self.engine.add_request(request_id, prompt, params)

    def abort_request(self, request_ids):
        self.held = [h for h in self.held if h[0] not in request_ids]
        self.engine.abort_request(request_ids)

    def step(self):
        outputs = self.engine.step()
        for held in self.held:
            self.engine.add_request(*held)
        self.held.clear()
        return outputs


@pytest.fixture(scope="module")
def tiny(embedded_model, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    tokenizer = embedded_model[1]
    folder = build_sharp_model("llama", tokenizer, tmp_path_factory.mktemp("pairing") / "m")
    return AutoModelForCausalLM.from_pretrained(folder).eval(), tokenizer, folder


@pytest.fixture(scope="module")
def case(tiny):
    from DecodingMethodsModels.models.loading import eos_token_ids, pad_token_id

    model, tokenizer, _ = tiny
    qs = [f"Question number {i}: name {'a few ' * (i % 5)}things that are blue." for i in range(16)]
    pref, base = prompts(tokenizer, qs)
    eos = eos_token_ids(model, tokenizer)
    settings = DecodeSettings(max_new_tokens=12, eos_ids=eos, pad_id=pad_token_id(tokenizer, eos))
    return pref, base, settings, hf_tokens(model, "la", pref, base, settings)


def build(folder, max_model_len=512, **extra):
    from DecodingMethodsModels.backends.vllm_driver import EngineSettings, build_engine

    return kept(build_engine(EngineSettings(model=str(folder), max_model_len=max_model_len,
                                            max_num_seqs=16, **extra)))


@pytest.fixture(scope="module")
def plain_engine(tiny):
    return build(tiny[2], kv_cache_memory_bytes=64 * 2**20)


def test_late_partner_detected_and_rerun(plain_engine, case):
    from DecodingMethodsModels.backends.vllm_driver import Driver

    pref, base, settings, want = case
    driver = Driver(LateBase(plain_engine), 16)
    assert vllm_tokens(driver, "la", pref, base, settings) == want
    assert driver.reruns == len(pref)  # every first attempt was out of step, none slipped by


def test_no_retries_left_is_one_line_error_naming_the_setting(plain_engine, case):
    from DecodingMethodsModels.backends.vllm_driver import Driver

    pref, base, settings, want = case
    with pytest.raises(UserError, match="--vllm_max_num_seqs") as err:
        vllm_tokens(Driver(LateBase(plain_engine), 16, retries=0), "la", pref, base, settings)
    assert "\n" not in str(err.value)
    # the requests still running were aborted: the engine decodes the next call cleanly
    assert vllm_tokens(Driver(plain_engine, 16), "la", pref, base, settings) == want


def test_chunked_prefill_breaks_pairs_and_reruns_restore_them(tiny, case):
    """Chunked prefill over a token budget that holds one pair's prompts, not eight, splits
    pairs across steps: they are caught, and decoded again alone give the hf backend's
    tokens."""
    from DecodingMethodsModels.backends.vllm_driver import Driver

    pref, base, settings, want = case
    engine = build(tiny[2], max_model_len=160, enable_chunked_prefill=True,
                   max_num_batched_tokens=192)
    driver = Driver(engine, 16)
    assert vllm_tokens(driver, "la", pref, base, settings) == want
    assert driver.reruns > 0  # the scheduler did break pairs, and none slipped by


def test_preemption_breaks_pairs_and_reruns_restore_them(tiny, case):
    """A KV cache of five 128-token blocks (vLLM's CPU block size): the prompts of two pairs
    fit, their answers do not, so vLLM preempts rows as they grow (or schedules one row of a
    pair for lack of a block); the broken pairs are caught and, decoded again alone (at most
    four blocks), give the hf backend's tokens."""
    from DecodingMethodsModels.backends.vllm_driver import Driver

    pref, base, settings, _ = case
    longer = replace(settings, max_new_tokens=50)
    want = hf_tokens(tiny[0], "la", pref, base, longer)
    assert max(len(p) for p in pref) + 50 <= 256 and max(len(p) for p in pref) <= 128
    engine = build(tiny[2], max_model_len=256, kv_cache_memory_bytes=640 * 1700)
    driver = Driver(engine, 16)
    assert vllm_tokens(driver, "la", pref, base, longer) == want
    assert driver.reruns > 0


def test_pair_that_cannot_fit_one_step_is_a_one_line_error(tiny, case):
    """A token budget smaller than a pair's two prompts splits every pair: after the retries,
    one line says what to change."""
    from DecodingMethodsModels.backends.vllm_driver import Driver

    pref, base, settings, _ = case
    assert max(len(p) for p in pref) + settings.max_new_tokens < 160
    engine = build(tiny[2], max_model_len=160, enable_chunked_prefill=True,
                   max_num_batched_tokens=96)
    with pytest.raises(UserError, match="--vllm_max_num_seqs") as err:
        vllm_tokens(Driver(engine, 16, retries=2), "la", pref, base, settings)
    assert "\n" not in str(err.value)
