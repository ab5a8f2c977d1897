"""PAD's second rule (pad_cross_tokenizer.py): a PersRM with another tokenizer than the decoding
model's. Tiny random decoders with the SmolLM2 tokenizer are guided by a tiny random Llama
PersRM with rm_helpers' byte-level BPE (400 tokens, a BOS added on encoding, as Llama 3's);
the cached, batched engine must give the tokens of the cache-free definition
(reward_guided_reference.reference_pad_retokenized), and `--method pad` must take such a PersRM.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from cli_helpers import QUESTIONS, gen_args, main_in_process, run_files, shared_dir
from conftest import sharpened
from test_reward_guided import FAMILIES, Zoo, early_stop_ids, settings
from test_reward_guided import QUESTIONS as ENGINE_QUESTIONS

from DecodingMethodsModels.engines.reference import reference_pad_retokenized
from DecodingMethodsModels.engines.retokenized_pad import RetokenizedGuide, Retokenizer
from DecodingMethodsModels.engines.reward_guided import decode_pad, stream_pad
from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.prompts.amulet import encode_prompt, preference_sentence
from DecodingMethodsModels.rules.guided import pad_retokenized_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 12


@pytest.fixture(scope="module")
def persrm_tokenizer(tmp_path_factory):
    from rm_helpers import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("persrm-tokenizer"))


@pytest.fixture(scope="module")
def persrm(persrm_tokenizer):
    from rm_helpers import tiny_llama_config
    from transformers import LlamaForCausalLM

    torch.manual_seed(300)
    return sharpened(LlamaForCausalLM(tiny_llama_config(persrm_tokenizer)), 10.0)


@pytest.fixture(scope="module")
def zoo(tokenizer) -> Zoo:
    return Zoo(len(tokenizer))


@pytest.fixture(scope="module")
def pref(tokenizer) -> list[list[int]]:
    sentence = preference_sentence("creative")
    return [encode_prompt(tokenizer, q, sentence, True) for q in ENGINE_QUESTIONS]


def engine(zoo, family, persrm, retokenizer, pref, config, generator=None, batch_size=None):
    return decode_pad(zoo.decoder(family, 0), persrm, pref, config, generator, batch_size,
                      retokenizer=retokenizer).token_ids


def reference(zoo, family, persrm, tokenizer, persrm_tokenizer, pref, config, generator=None):
    return reference_pad_retokenized(zoo.decoder(family, 0), persrm, tokenizer, persrm_tokenizer,
                                     pref, config, generator)


# ----- the pure rule and the text bridge --------------------------------------------------------


def test_scores_are_raw_logits_moved_towards_the_persrm_by_w():
    z = torch.tensor([[3.0, 1.0, -2.0], [0.5, 0.25, 0.0]])
    u = torch.tensor([[-1.0, 2.0, 0.0], [4.0, -4.0, 1.0]])
    assert torch.allclose(pad_retokenized_scores(z, u, 0.8), z + 0.8 * (u - z))
    assert torch.allclose(pad_retokenized_scores(z, u, 0.8), 0.2 * z + 0.8 * u)
    assert torch.equal(pad_retokenized_scores(z, u, 0.0), z)
    inf = float("-inf")
    scores = pad_retokenized_scores(torch.tensor([[2.0, inf]]), torch.tensor([[inf, 1.0]]), 0.5)
    assert not torch.isnan(scores).any()


def test_the_bridge_reads_text_as_pads_code_does(tokenizer, persrm_tokenizer):
    bridge = Retokenizer(tokenizer, persrm_tokenizer)
    prompt = encode_prompt(tokenizer, "Cook pasta?", "", True)
    text = tokenizer.decode(prompt, skip_special_tokens=True)
    assert "<|im_start|>" not in text and "Cook pasta?" in text
    ids = bridge.persrm_ids(prompt)
    assert ids[0] == persrm_tokenizer.bos_token_id  # the PersRM's special tokens are added
    assert persrm_tokenizer.decode(ids, skip_special_tokens=True) == text
    word = tokenizer.encode(" pasta", add_special_tokens=False)[0]
    first = persrm_tokenizer.encode(tokenizer.decode([word]), add_special_tokens=False)[0]
    assert bridge.candidate_id(word) == first
    special = tokenizer.convert_tokens_to_ids("<|im_start|>")  # kept when decoded alone
    assert bridge.candidate_id(special) == persrm_tokenizer.encode(
        "<|im_start|>", add_special_tokens=False)[0]


def test_a_token_decoding_to_nothing_stands_for_a_space(persrm_tokenizer):
    class Silent:
        def decode(self, ids, skip_special_tokens=False):
            return ""

    space = persrm_tokenizer.encode(" ", add_special_tokens=False)[0]
    assert Retokenizer(Silent(), persrm_tokenizer).candidate_id(7) == space


def test_a_text_the_persrm_cannot_encode_is_a_user_error(tokenizer):
    class Mute:
        def encode(self, text, add_special_tokens=True):
            return []

    with pytest.raises(UserError, match="to no token"):
        Retokenizer(tokenizer, Mute()).candidate_id(100)


@torch.inference_mode()
def test_the_persrm_cache_follows_every_rewrite_of_the_re_encoding(tokenizer, persrm_tokenizer,
                                                                   persrm):
    """Decoding-model tokens of one character each: the PersRM's BPE merges each new character
    into the end of its last ids, so most steps rewrite what the cache holds. After the prefill
    and every step, each row's PersRM logits equal a fresh forward of its whole re-encoding,
    while a second question joins after three steps and the first leaves when its text ends."""
    bridge = Retokenizer(tokenizer, persrm_tokenizer)
    prompts = [encode_prompt(tokenizer, q, "", True) for q in ("Hi", "How to cook pasta?")]
    texts = (" cook the pasta", " Boil water, add salt, then drain it well.")
    steps = [[tokenizer.convert_tokens_to_ids(tokenizer.tokenize(ch))[0] for ch in text]
             for text in texts]
    config = dataclasses.replace(settings("pad"), pad_id=bridge.pad_id)
    sequences = [list(p) for p in prompts]

    def start(row: int) -> RetokenizedGuide:
        return RetokenizedGuide(persrm, bridge, [prompts[row]],
                                 [bridge.persrm_ids(prompts[row])], config, None)

    def check(guide, live):
        for position, row in enumerate(live):
            fresh = persrm(input_ids=torch.tensor([bridge.persrm_ids(sequences[row])]))
            torch.testing.assert_close(guide.logits[position], fresh.logits[0, -1],
                                       rtol=1e-4, atol=1e-3)

    guide, live, done = start(0), [0], [0, 0]
    check(guide, live)
    while live:
        if done[0] == 3 and len(live) == 1 and live[0] == 0:
            guide.admit(start(1))
            live = [0, 1]
            check(guide, live)
        keep = None
        if any(done[row] == len(steps[row]) for row in live):
            kept = [i for i, row in enumerate(live) if done[row] < len(steps[row])]
            keep, live = torch.tensor(kept), [live[i] for i in kept]
            if not live:
                break
        tokens = torch.tensor([steps[row][done[row]] for row in live])
        guide.advance(keep, tokens, tokens)
        for row in live:
            sequences[row].append(steps[row][done[row]])
            done[row] += 1
        check(guide, live)
    assert done == [len(s) for s in steps]
    assert tokenizer.decode(sequences[1][len(prompts[1]):]) == texts[1]
    assert bridge.counts["rewritten"] > len(steps[1]) // 2, bridge.counts


# ----- the engine against the definition --------------------------------------------------------
# ----- the engine against the definition --------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_engine_equals_the_cache_free_definition(zoo, family, persrm, tokenizer,
                                                 persrm_tokenizer, pref):
    bridge = Retokenizer(tokenizer, persrm_tokenizer)
    config = settings("pad", max_new_tokens=STEPS, ignore_eos=True)
    got = engine(zoo, family, persrm, bridge, pref, config)
    assert got == reference(zoo, family, persrm, tokenizer, persrm_tokenizer, pref, config)
    # the PersRM steers, and the re-encoding both extended and rewrote its cached ids
    greedy = engine(zoo, family, persrm, bridge, pref, settings("pad", weight=0.0,
                                                                 max_new_tokens=STEPS))
    assert got != greedy
    assert bridge.counts["extended"] > 0 and bridge.counts["rewritten"] > 0, bridge.counts


def test_sampling_equals_the_definition_with_the_same_generator(zoo, persrm, tokenizer,
                                                                persrm_tokenizer, pref):
    """One question per call: the engine draws for a whole batch at once, the definition one
    question after another."""
    config = settings("pad", weight=1.5, max_new_tokens=STEPS, mode="topk", sample_temp=0.9,
                      ignore_eos=True)
    bridge = Retokenizer(tokenizer, persrm_tokenizer)
    for prompt in pref:
        got = engine(zoo, "llama", persrm, bridge, [prompt], config,
                     torch.Generator().manual_seed(5))
        want = reference(zoo, "llama", persrm, tokenizer, persrm_tokenizer, [prompt], config,
                         torch.Generator().manual_seed(5))
        assert got == want
    greedy = engine(zoo, "llama", persrm, bridge, pref, settings("pad", weight=1.5,
                                                                 max_new_tokens=STEPS))
    assert [engine(zoo, "llama", persrm, bridge, [p], config, torch.Generator().manual_seed(5))[0]
            for p in pref] != greedy


def test_finished_rows_leave_and_slots_refill_without_changing_tokens(zoo, persrm, tokenizer,
                                                                      persrm_tokenizer, pref):
    bridge = Retokenizer(tokenizer, persrm_tokenizer)
    unstopped = engine(zoo, "qwen2", persrm, bridge, pref, settings("pad", max_new_tokens=STEPS))
    config = settings("pad", eos_ids=early_stop_ids(unstopped), max_new_tokens=STEPS)
    want = reference(zoo, "qwen2", persrm, tokenizer, persrm_tokenizer, pref, config)
    assert len({len(row) for row in want}) > 1  # questions end at different steps
    assert engine(zoo, "qwen2", persrm, bridge, pref, config) == want
    assert engine(zoo, "qwen2", persrm, bridge, pref, config, batch_size=2) == want
    streamed = dict(stream_pad(zoo.decoder("qwen2", 0), persrm, pref, config, 1,
                               retokenizer=bridge))
    assert [streamed[i] for i in range(len(pref))] == want


# ----- the CLI ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_tokenizer_persrm(tmp_path_factory) -> Path:
    """A tiny Llama causal LM saved with rm_helpers' tokenizer: a PersRM of another tokenizer."""
    from rm_helpers import build_tokenizer, tiny_llama_config
    from transformers import LlamaForCausalLM

    out = shared_dir(tmp_path_factory, "persrm-other-tokenizer")
    if not (out / "model.safetensors").is_file():
        tokenizer = build_tokenizer(out)
        torch.manual_seed(301)
        config = tiny_llama_config(tokenizer)
        config.initializer_range = 0.3
        LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory, tiny_model_dirs) -> Path:
    from cli_helpers import sensitive_model

    return sensitive_model(tmp_path_factory, tiny_model_dirs)


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory) -> Path:
    from cli_helpers import demo_data

    return demo_data(tmp_path_factory)


def test_pad_with_a_persrm_of_another_tokenizer_writes_the_engines_tokens(
    cli_model, cli_data, other_tokenizer_persrm, tmp_path
):
    from transformers import AutoTokenizer

    from DecodingMethodsModels.engines.reward_guided import GuidedSettings
    from DecodingMethodsModels.models.guides import load_persrm
    from DecodingMethodsModels.models.loading import (
        eos_token_ids,
        load_model,
        pad_token_id,
        resolve_model,
    )
    from DecodingMethodsModels.pipeline.decode import decode_response

    limit = 4
    code, err = main_in_process(gen_args(cli_model, cli_data, tmp_path, "--rm_name",
                                         str(other_tokenizer_persrm), "--limit", str(limit),
                                         method="pad", max_new_tokens=STEPS, batch_size=4))
    assert code == 0, err
    final, directory = run_files(tmp_path, cli_model, "pad")
    written = json.loads(final.read_text(encoding="utf-8"))
    meta = json.loads((directory / "pad.meta.json").read_text())
    assert meta["environment"]["guide"]["retokenized"] is True

    tokenizer = AutoTokenizer.from_pretrained(cli_model)
    decoder = load_model(resolve_model(str(cli_model)), "cpu", "float32")
    eos = eos_token_ids(decoder, tokenizer)
    sentence = preference_sentence("creative")
    pref = [encode_prompt(tokenizer, q, sentence, True) for q in QUESTIONS[:limit]]
    guide = load_persrm(str(other_tokenizer_persrm), "cpu", "float32")
    bridge = Retokenizer(tokenizer, AutoTokenizer.from_pretrained(other_tokenizer_persrm))
    config = GuidedSettings(weight=0.8, max_new_tokens=STEPS, eos_ids=eos,
                            pad_id=pad_token_id(tokenizer, eos))
    direct = decode_pad(decoder, guide, pref, config, retokenizer=bridge).token_ids
    assert [r["response"] for r in written] == [decode_response(tokenizer, ids, eos)
                                                for ids in direct]
    plain = decode_pad(decoder, decoder, pref, config).token_ids  # another guide: other tokens
    assert direct != plain


def test_args_with_a_reward_model_of_another_tokenizer_is_still_refused(
    cli_model, cli_data, other_tokenizer_persrm, tmp_path
):
    out = tmp_path / "out"
    code, err = main_in_process(gen_args(cli_model, cli_data, out, "--rm_name",
                                         str(other_tokenizer_persrm), method="args"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "the reward model's tokenizer gives other ids than the decoding model's" in err
    assert not out.exists()
