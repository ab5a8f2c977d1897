"""The evaluation's inputs on the paper's checkpoints (stand-ins with their real tokenizers and
templates, tests/standins.py): ArmoRM reads Amulet's conversation in the Llama-3 template with
its gating pattern before the answer and its pad id 128256; PAD's and ARGS's public scoring
read a Llama-3.1 decoder's output (its date lines included) as the public scripts do; the judge
sees each decoder's response without special tokens, cut at its end of turn."""

from __future__ import annotations

import types

import pytest
import torch
from standins import DECODERS

from DecodingMethodsModels.models.loading import eos_token_ids
from DecodingMethodsModels.pipeline.decode import decode_response
from DecodingMethodsModels.prompts.amulet import preference_sentence
from DecodingMethodsModels.prompts.pad import encode_pad_prompt, preference_prompt
from evals.judge.judge import build_user_prompt
from evals.scoring import reward_model
from evals.scoring.armorm import LLAMA3_GATING_PATTERN
from evals.scoring.scored_ids import public_ids
from evals.scoring.scoring_inputs import extract_args_pad_response

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTION = "Why is the sky blue?"
ANSWER = "Sunlight scatters off air molecules, and blue light scatters the most."


@pytest.fixture(scope="module")
def armorm(standin_dirs):
    return reward_model.load_reward_model(str(standin_dirs["armorm"]), device="cpu",
                                          dtype="float32")


def test_armorm_reads_the_conversation_in_the_llama_3_template(armorm):
    preference = preference_sentence("concise")
    ids = reward_model.conversation_ids(armorm.tokenizer, QUESTION, preference, ANSWER)
    assert armorm.tokenizer.decode(ids) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        f"{QUESTION} {preference}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        f"{ANSWER}<|eot_id|>")
    n = len(LLAMA3_GATING_PATTERN)
    starts = [i for i in range(len(ids) - n + 1) if tuple(ids[i:i + n]) == LLAMA3_GATING_PATTERN]
    answer = armorm.tokenizer.encode(ANSWER, add_special_tokens=False)
    assert starts == [len(ids) - 1 - len(answer) - n]  # once, right before the answer
    assert armorm.pad_id == 128256 and armorm.implementation == "armorm-native"
    rows = reward_model.score_rows(armorm, [ids, ids[:-3]])
    assert len(rows) == 2 and len(rows[0]["rewards"]) == 19
    alone = reward_model.score_rows(armorm, [ids[:-3]])
    assert torch.allclose(torch.tensor(rows[1]["rewards"]), torch.tensor(alone[0]["rewards"]),
                          atol=1e-5)  # read before the first pad id, whatever the batch


def pad_public_record(tokenizer, pad_set: str, response_ids: list[int]) -> dict:
    """A record as PAD.py writes it: the whole sequence decoded with special tokens skipped,
    `removeprefix` of the prompt text (which removes nothing under a chat template)."""
    prompt = preference_prompt(pad_set) + QUESTION
    ids = encode_pad_prompt(tokenizer, QUESTION, pad_set) + response_ids
    return {"prompt": prompt,
            "result": tokenizer.decode(ids, skip_special_tokens=True).removeprefix(prompt)}


def test_pad_scoring_of_a_llama_3_1_output_drops_the_date_lines(standin_dirs, armorm):
    from transformers import AutoTokenizer

    decoder = AutoTokenizer.from_pretrained(standin_dirs["llama-3.1-8b-instruct"])
    answer = decoder.encode(ANSWER, add_special_tokens=False)
    record = pad_public_record(decoder, "helpfulness", answer + [128009])
    assert record["result"].startswith("system\n\nCutting Knowledge Date: December 2023\n")
    ids, skip_at = public_ids(armorm, record, "pad")
    assert skip_at is None
    assert ids == reward_model.message_ids(armorm.tokenizer, [
        {"role": "user", "content": " " + QUESTION}, {"role": "assistant", "content": ANSWER}])
    assert extract_args_pad_response(record["prompt"], record["result"]) == ANSWER


def test_args_scoring_reads_the_hh_dialogue_with_one_bos(armorm):
    prompt = f"\n\nHuman: {QUESTION}\n\nAssistant:"
    record = {"prompt": prompt, "response": f"{prompt} {ANSWER}\n\nHuman: and another turn"}
    ids, _ = public_ids(armorm, record, "args")  # cut before the next "Human:", as ARGS cuts
    assert ids.count(128000) == 1 and ids[0] == 128000
    assert armorm.tokenizer.decode(ids[1:]) == f"{prompt} {ANSWER}\n\n"


@pytest.mark.parametrize("name", DECODERS)
def test_judge_sees_the_response_without_special_tokens(standin_dirs, name):
    """Whatever EOS id ends it (each listed one), the stored response is the text before it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(standin_dirs[name])
    model = types.SimpleNamespace(generation_config=AutoModelForCausalLM.from_pretrained(
        standin_dirs[name]).generation_config)
    answer = tokenizer.encode(ANSWER, add_special_tokens=False)
    for eos in eos_token_ids(model, tokenizer):
        response = decode_response(tokenizer, answer + [eos], eos_token_ids(model, tokenizer))
        assert response == ANSWER
        prompt = build_user_prompt(QUESTION, preference_sentence("creative"), response, "B")
        assert f'"text": """{ANSWER}"""' in prompt
        special = [t for t in tokenizer.all_special_tokens if t]
        assert not any(token in response for token in special)
