"""rules/beam_search.py against transformers: fed each running beam's top-K log-probs from a
plain forward pass, the bookkeeping gives `generate(num_beams=n)`'s answer (the hf backend's
`--method beam`), question by question, whatever the batch."""

from __future__ import annotations

import pytest
import torch

from DecodingMethodsModels.pipeline.methods import DecodeSettings, run_beam
from DecodingMethodsModels.rules.beam_search import BeamSearch, candidates_per_beam

VOCAB = 48


def tiny_model(seed: int, eos_ids: list[int], eos_boost: float):
    """A random Llama with a 48-token vocabulary whose EOS logits are raised by `eos_boost`, so
    that hypotheses end at many steps and the finishing rules are exercised."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=eos_ids[0],
                         pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.mul_(4.0)  # margins far above fp32 noise between code paths
        model.lm_head.bias = None
        model.lm_head.weight[eos_ids] *= eos_boost
    return model


def bookkeeping_answers(model, prompts, num_beams, eos_ids, max_new_tokens):
    """Each question alone: every running beam's next-token log-probs from an uncached forward
    of prompt + beam, top K of them handed to BeamSearch."""
    keep = candidates_per_beam(num_beams, eos_ids)
    answers, searches = [], []
    for prompt in prompts:
        search = BeamSearch(num_beams, eos_ids, max_new_tokens, VOCAB)
        while not search.done:
            rows = torch.tensor([prompt + beam.tokens for beam in search.running])
            with torch.inference_mode():
                logits = model(input_ids=rows).logits[:, -1, :]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            values, tokens = torch.topk(logprobs, keep, dim=-1)
            search.advance([dict(zip(t.tolist(), v.tolist(), strict=True))
                            for t, v in zip(tokens, values, strict=True)])
        answers.append(search.answer())
        searches.append(search)
    return answers, searches


CASES = [  # (seed, num_beams, eos ids, eos boost, max new tokens)
    (0, 2, [2], 1.0, 12),
    (1, 3, [2], 3.0, 10),
    (2, 4, [2, 5], 2.5, 9),
    (3, 2, [2, 5, 7], 2.0, 14),
    (4, 5, [3], 4.0, 8),
    (5, 1, [2], 3.0, 10),
    (6, 2, [2, 5, 7], 2.0, 12),  # an EOS candidate ranked below the best n would win here
    (13, 2, [2], 3.0, 12),
]


@pytest.mark.parametrize("seed, num_beams, eos_ids, boost, max_new", CASES)
def test_bookkeeping_gives_generates_beam_answers(seed, num_beams, eos_ids, boost, max_new):
    model = tiny_model(seed, eos_ids, boost)
    generator = torch.Generator().manual_seed(100 + seed)
    prompts = [torch.randint(8, VOCAB, (n,), generator=generator).tolist()
               for n in (3, 7, 5, 11, 4, 9)]
    settings = DecodeSettings(max_new_tokens=max_new, eos_ids=eos_ids, pad_id=0,
                              num_beams=num_beams)
    expected = run_beam(model, prompts, prompts, settings, 0)
    got, _ = bookkeeping_answers(model, prompts, num_beams, eos_ids, max_new)
    assert got == expected


def test_the_cases_reach_every_ending():
    """The cases above are not all decided by the length limit: some answers end on an EOS,
    some searches close early (n hypotheses kept and no running beam can beat them), some
    answers run to the limit."""
    endings = set()
    for seed, num_beams, eos_ids, boost, max_new in CASES:
        model = tiny_model(seed, eos_ids, boost)
        generator = torch.Generator().manual_seed(100 + seed)
        prompts = [torch.randint(8, VOCAB, (n,), generator=generator).tolist()
                   for n in (3, 7, 5, 11, 4, 9)]
        answers, searches = bookkeeping_answers(model, prompts, num_beams, eos_ids, max_new)
        for answer, search in zip(answers, searches, strict=True):
            if answer[-1] in eos_ids:
                endings.add("eos")
            if len(answer) == max_new:
                endings.add("limit")
            if not search.open and search.steps < max_new:
                endings.add("closed early")
    assert endings == {"eos", "limit", "closed early"}


def test_advance_wants_one_entry_per_running_beam():
    search = BeamSearch(2, [2], 4, VOCAB)
    with pytest.raises(ValueError, match="1 running beams"):
        search.advance([{3: -0.1}, {4: -0.2}])


def test_keeps_enough_candidates_for_every_eos():
    assert candidates_per_beam(4, [2]) == 8
    assert candidates_per_beam(4, [2, 5, 7]) == 16
