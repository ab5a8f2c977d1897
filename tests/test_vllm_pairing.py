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

SENTINEL, UNUSABLE, VOCAB = 10, 11, 12


def params(key: str, role: str, **spec) -> SamplingParams:
    pair = PairSpec(pair=key, role=role, rule="la", params={"ratio": 2.0}, sentinel=SENTINEL,
                    unusable=UNUSABLE, **spec)
    return SamplingParams(temperature=0.0, stop_token_ids=[2, SENTINEL, UNUSABLE],
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
    scores = la_rule(2.0)(pref, base)
    scores[:, [SENTINEL, UNUSABLE]] = float("-inf")  # never chosen by a rule
    return int(scores.argmax())


def test_pair_forced_to_rule_token_through_moves_and_swaps():
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


def test_sentinels_are_never_chosen_by_a_rule():
    """Both rows favour the sentinel overwhelmingly: the rule's token is another one."""
    processor = PairedRuleProcessor(None, torch.device("cpu"), False)
    processor.update_state(update(added=[(0, params("q", "pref"), [5], []),
                                         (1, params("q", "base"), [6], [])], size=2))
    logits = torch.zeros(2, VOCAB)
    logits[:, SENTINEL], logits[:, UNUSABLE], logits[:, 3] = 50.0, 40.0, 1.0
    assert forced(processor.apply(logits)) == [3, 3]


def test_partner_absent_behind_or_doubled_gets_the_sentinel():
    processor = PairedRuleProcessor(None, torch.device("cpu"), False)
    processor.update_state(update(added=[(0, params("alone", "pref"), [5], [])], size=1))
    assert forced(processor.apply(torch.randn(1, VOCAB))) == [SENTINEL]
    processor.update_state(update(removed=[0], added=[(0, params("late", "pref"), [5], [7]),
                                                      (1, params("late", "base"), [6], [])]))
    assert forced(processor.apply(torch.randn(2, VOCAB))) == [SENTINEL, SENTINEL]
    # two rows claiming the same role (a reused key that slipped past validation): neither
    # decodes unpaired
    processor.update_state(update(removed=[0, 1], added=[(0, params("twice", "pref"), [5], []),
                                                         (1, params("twice", "pref"), [6], [])]))
    assert forced(processor.apply(torch.randn(2, VOCAB))) == [SENTINEL, SENTINEL]


def test_two_rows_that_disagree_on_the_rule_are_not_combined():
    """A pref and a base row under one key but with other settings (a client's mistake): each
    ends on its own sentinel instead of decoding under one of the two rules."""
    other = PairSpec(pair="mixed", role="base", rule="la", params={"ratio": 5.0}, sentinel=9,
                     unusable=UNUSABLE)
    base = SamplingParams(temperature=0.0, stop_token_ids=[9, UNUSABLE],
                          extra_args=other.as_extra_args())
    processor = PairedRuleProcessor(None, torch.device("cpu"), False)
    processor.update_state(update(added=[(0, params("mixed", "pref"), [5], []),
                                         (1, base, [6], [])], size=2))
    assert forced(processor.apply(torch.randn(2, VOCAB))) == [SENTINEL, 9]


def test_nonfinite_scores_get_the_unusable_sentinel():
    processor = PairedRuleProcessor(None, torch.device("cpu"), False)
    processor.update_state(update(added=[(0, params("nan", "pref"), [5], []),
                                         (1, params("nan", "base"), [6], [])], size=2))
    logits = torch.randn(2, VOCAB)
    logits[0, 4] = float("nan")
    assert forced(processor.apply(logits)) == [UNUSABLE, UNUSABLE]


def test_a_rule_that_fails_never_stops_the_engine():
    """implicit PAD's top-k larger than this vocabulary (past validate_params' cap check,
    which cannot see the vocabulary): the rows get the unusable sentinel, apply returns."""
    spec = PairSpec(pair="k", role="pref", rule="pad", params={"weight": 0.8, "topk": 50},
                    sentinel=SENTINEL, unusable=UNUSABLE)
    rows = []
    for row, role in enumerate(("pref", "base")):
        extra = PairSpec(**{**spec.__dict__, "role": role}).as_extra_args()
        rows.append((row, SamplingParams(temperature=0.0, stop_token_ids=[SENTINEL, UNUSABLE],
                                         extra_args=extra), [5], []))
    processor = PairedRuleProcessor(None, torch.device("cpu"), False)
    processor.update_state(update(added=rows, size=2))
    assert forced(processor.apply(torch.randn(2, VOCAB))) == [UNUSABLE, UNUSABLE]


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

    def __getattr__(self, name):  # the tokenizer, the renderer, the model's config
        return getattr(self.engine, name)

    def add_request(self, request_id, prompt, params, **extra):
        if "-a0-base" in request_id:
            self.held.append((request_id, prompt, params, extra))
        else:
            self.engine.add_request(request_id, prompt, params, **extra)

    def abort_request(self, request_ids):
        self.held = [h for h in self.held if h[0] not in request_ids]
        self.engine.abort_request(request_ids)

    def step(self):
        outputs = self.engine.step()
        for request_id, prompt, params, extra in self.held:
            self.engine.add_request(request_id, prompt, params, **extra)
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


# ----- sampled draws: on the logits' device, vectorised over a group ------------------------


def sampled_group(n: int, rule: str = "la", sampling=None):
    sampling = sampling or {"temperature": 0.7, "top_k": None, "top_p": 0.9}
    params_of = {"la": {"ratio": 2.0}, "pad": {"weight": 0.8, "topk": 5}}
    if rule == "pad":
        sampling = {"temperature": sampling["temperature"]}
    spec = PairSpec(pair="g", role="pref", rule=rule, params=params_of[rule], sentinel=SENTINEL,
                    unusable=UNUSABLE, seed=0, sampling=sampling)
    return [(f"g{i}", 2 * i, 2 * i + 1, replace(spec, pair=f"g{i}", seed=i), 3)
            for i in range(n)]


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("rule", ["la", "pad"])
def test_sampled_draws_stay_on_the_logits_device(device, rule, monkeypatch):
    """Every tensor a sampled draw makes lives on the logits' device (a CPU generator beside
    GPU logits made torch.multinomial raise inside `apply`, which stopped the engine): no
    torch.Generator is made, and on "meta" logits (placement checked without computing) the
    tokens come back on "meta"."""
    made = []
    real = torch.Generator
    monkeypatch.setattr(torch, "Generator", lambda *a, **k: made.append(a) or real(*a, **k))
    logits = torch.randn(8, VOCAB, device=device)
    choice, bad = vllm_pairing.group_choice(sampled_group(4, rule), logits)
    assert choice.device.type == bad.device.type == device and choice.shape == (4,)
    assert made == []


def test_sampling_warps_a_group_at_once_not_row_by_row(monkeypatch):
    """Top-p sorts the vocabulary once for the whole group (one call of torch.sort), and the
    draw of a row does not depend on the rows beside it."""
    calls = []
    real = torch.sort
    monkeypatch.setattr(torch, "sort", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    logits = torch.randn(16, VOCAB)
    together = vllm_pairing.group_choice(sampled_group(8), logits)[0].tolist()
    assert len(calls) == 1
    alone = [vllm_pairing.group_choice([sampled_group(8)[i]], logits)[0].item()
             for i in range(8)]
    assert together == alone
    assert len(set(together)) > 1  # the seeds draw different tokens


def test_draw_by_inversion_follows_the_probabilities():
    """`draw` picks the first id whose cumulative probability exceeds u: u just below a
    boundary stays on its side, and an id of probability 0 is never drawn."""
    scores = torch.log(torch.tensor([[0.5, 0.0, 0.25, 0.25]]))
    picks = [vllm_pairing.draw(scores, torch.tensor([u])).item() for u in (0.0, 0.49, 0.5, 0.74,
                                                                         0.75, 0.999)]
    assert picks == [0, 0, 2, 2, 3, 3]


def test_late_partner_caught_with_the_engine_core_in_its_own_process(tiny, case):
    """The engine core in a process of its own (vLLM's default for LLMEngine): nothing the
    processor knows reaches this process, yet every pair whose partner came late is caught
    from the returned tokens and decoded again."""
    from DecodingMethodsModels.backends.vllm_driver import Driver

    pref, base, settings, want = case
    engine = build(tiny[2], kv_cache_memory_bytes=64 * 2**20, engine_process=True)
    try:
        assert type(engine.engine_core).__name__ == "SyncMPClient"  # not InprocClient
        driver = Driver(LateBase(engine), 16)
        assert vllm_tokens(driver, "la", pref[:8], base[:8], settings) == want[:8]
        assert sorted(driver.reran) == [(k, "out_of_step") for k in range(8)]
    finally:
        engine.engine_core.shutdown()  # its process ends with the test
