"""A tiny reward-model tokenizer and config for the tests (no network): a byte-level BPE with a
Llama-3-like chat template whose post-processor adds BOS, as Llama 3's does.
Not a test module: nothing here is collected.
"""

from __future__ import annotations

from pathlib import Path

BOS, SOH, EOH, EOT, PAD = (
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|pad|>",
)
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
PREFERENCE = "Your answer should be creative as much as possible."
CORPUS = [
    "What is a good way to learn to cook pasta at home?",
    "Imagine a kitchen where every noodle sings, creative and bright as a summer morning.",
    "Boil water, add salt, cook the pasta for ten minutes, then drain it well.",
    PREFERENCE,
]


def build_tokenizer(out_dir: Path, chat_template: bool = True):
    """The test tokenizer saved to ``out_dir``; ``chat_template=False`` leaves the template out
    (as GPT-2's or BERT's tokenizers have none)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[BOS, SOH, EOH, EOT, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(CORPUS, trainer=trainer)
    bos_id = core.token_to_id(BOS)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOT, pad_token=PAD
    )
    if chat_template:
        tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def tiny_llama_config(tokenizer, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **extra,
    )
