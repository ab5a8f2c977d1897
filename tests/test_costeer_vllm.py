"""costeer on vLLM, the model its own SLM: the pair of requests Linear Alignment runs with ratio
c_T - 1 gives the hf backend's costeer tokens, greedy, on a tiny sharpened random Llama and
16 questions."""

from __future__ import annotations

import pytest
from cli_helpers import QUESTIONS
from vllm_helpers import build_sharp_model, hf_tokens, kept, prompts, require_vllm, vllm_tokens

require_vllm()

from DecodingMethodsModels.pipeline.methods import DecodeSettings  # noqa: E402

SIXTEEN = QUESTIONS + ["Why is ice slippery?", "What is a prime number?", "Name a tall tree.",
                       "How do bees make honey?"]


@pytest.mark.usefixtures("one_torch_thread")
def test_costeer_on_vllm_is_the_hf_backends_costeer(tmp_path, smol_tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from DecodingMethodsModels.backends.vllm_driver import Driver, EngineSettings, build_engine

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    folder = build_sharp_model("llama", tokenizer, tmp_path / "llama")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    engine = kept(build_engine(EngineSettings(model=str(folder), max_model_len=512,
                                              max_num_seqs=16,
                                              kv_cache_memory_bytes=128 * 2**20)))
    pref, base = prompts(tokenizer, SIXTEEN, "concise")
    settings = DecodeSettings(max_new_tokens=10, eos_ids=[2], pad_id=2)
    want = hf_tokens(model, "costeer", pref, base, settings)
    assert vllm_tokens(Driver(engine, 16), "costeer", pref, base, settings) == want
    assert want != hf_tokens(model, "base", pref, base, settings)
