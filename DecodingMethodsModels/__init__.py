"""Decoding methods of the Amulet reproduction: math, engine, loading, prompts and I/O.

The public library API (the package README, "Use it as a library"), imported on first use
so that the CLI's argument checks never wait for torch:

- `AmuletProcessor`, `LinearAlignmentProcessor`, `TwoPromptProcessor`: logits processors for
  `model.generate(pref_ids, logits_processor=[...])` (library/processors.py);
- `amulet_generate`, `la_generate`, `pad_implicit_generate`: the engines as
  `model.generate(custom_generate=...)`;
- `personalise`: answers to a list of questions for a preference, as strings (library/api.py);
- `amulet_rule`, `la_rule`, `decode_two_prompts`: the pure rules and the engine themselves;
- `CoSteerProcessor`, `costeer_rule`, `costeer_ratio`: CoSteer (a small model steering the
  decoding one) as a logits processor and as its rule; `decode_prompt_rows` with `Reader`:
  the engine with several models, each reading some of a question's prompts;
- `ArgsProcessor`, `PadProcessor`: ARGS and PAD (explicit or implicit) as logits processors
  (library/guided_processors.py);
  `decode_args`, `decode_pad`, `decode_pad_implicit` with `GuidedSettings`: their batched
  engine (engines/reward_guided.py); `check_same_tokenizer`: that a guide shares the tokenizer;
  `attach_value_head`: PAD's value head on a loaded PersRM, as PAD.py applies it
  (models/value_head.py).
  `Retokenizer`: PAD's second rule in `decode_pad`, for a PersRM of another tokenizer.
"""

from importlib import import_module

_PUBLIC = {
    "AmuletProcessor": "library.processors",
    "CoSteerProcessor": "library.processors",
    "ArgsProcessor": "library.guided_processors",
    "PadProcessor": "library.guided_processors",
    "LinearAlignmentProcessor": "library.processors",
    "TwoPromptProcessor": "library.processors",
    "amulet_generate": "library.api",
    "la_generate": "library.api",
    "pad_implicit_generate": "library.api",
    "personalise": "library.api",
    "amulet_rule": "rules.combine",
    "la_rule": "rules.combine",
    "costeer_rule": "rules.costeer",
    "costeer_ratio": "rules.costeer",
    "Reader": "engines.prompt_rows",
    "decode_prompt_rows": "engines.prompt_rows",
    "decode_two_prompts": "engines.prompt_rows",
    "GuidedSettings": "engines.guided_settings",
    "check_same_tokenizer": "engines.token_ids",
    "decode_args": "engines.reward_guided",
    "decode_pad": "engines.reward_guided",
    "decode_pad_implicit": "engines.reward_guided",
    "attach_value_head": "models.value_head",
    "Retokenizer": "engines.retokenized_pad",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
