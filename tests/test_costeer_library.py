"""CoSteer in the library: personalise(method="costeer", slm=...) and CoSteerProcessor in the
LLM's own generate give the same tokens; with the model as its own SLM, personalise gives
la's answers with ratio c_T - 1."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import QUESTIONS

from DecodingMethodsModels import CoSteerProcessor, costeer_ratio, personalise
from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.prompts.costeer import costeer_sentence, encode_costeer_prompt


def generate_with_processor(llm, tokenizer, question, processor_of):
    sentence = costeer_sentence("concise")
    plain = encode_costeer_prompt(tokenizer, question, "")
    pers = encode_costeer_prompt(tokenizer, question, sentence)
    out = llm.generate(torch.tensor([plain]), attention_mask=torch.ones(1, len(plain)),
                       logits_processor=[processor_of([pers], [plain])], do_sample=False,
                       max_new_tokens=10, eos_token_id=2, pad_token_id=2)
    ids = out[0, len(plain):].tolist()
    ids = ids[: ids.index(2)] if 2 in ids else ids
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def test_the_processor_in_generate_gives_personalises_answers(costeer_models):
    llm, slm, tokenizer = costeer_models
    questions = QUESTIONS[:4]
    got = personalise(llm, tokenizer, questions, "concise", "costeer", slm=slm,
                      prompt_style="costeer", max_new_tokens=10)
    want = [generate_with_processor(llm, tokenizer, q,
                                    lambda pers, plain: CoSteerProcessor(slm, pers, plain))
            for q in questions]
    assert got == want
    # the model as its own SLM: the processor reuses generate's scores for the plain prompt
    own = personalise(llm, tokenizer, questions, "concise", "costeer", prompt_style="costeer",
                      max_new_tokens=10)
    assert own == [generate_with_processor(llm, tokenizer, q,
                                           lambda pers, plain: CoSteerProcessor(llm, pers))
                   for q in questions]
    assert own != got


def test_personalise_costeer_on_its_own_model_is_la_with_ratio_c_minus_1(costeer_models):
    llm, _, tokenizer = costeer_models
    c = costeer_ratio(20, 2.0, 1.0, 2.0, 10.0)
    costeer = personalise(llm, tokenizer, QUESTIONS[:6], "verbose", "costeer", max_new_tokens=10)
    la = personalise(llm, tokenizer, QUESTIONS[:6], "verbose", "la", ratio=c - 1.0,
                     max_new_tokens=10)
    assert costeer == la


def test_an_slm_for_another_method_is_refused(costeer_models):
    llm, slm, tokenizer = costeer_models
    with pytest.raises(UserError, match="slm= is for method='costeer'"):
        personalise(llm, tokenizer, ["q"], method="la", slm=slm)
    with pytest.raises(UserError, match="prompt_style"):
        personalise(llm, tokenizer, ["q"], method="costeer", prompt_style="plain")
