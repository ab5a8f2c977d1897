"""What the response files of one setting were generated with, read from their sidecars.

A comparison of methods is fair only if every method decoded the same questions with the same
model, dtype, length limit, sampling settings and penalties. main.py refuses to keep a file of
other settings, but files can be copied, edited or made by an older version: the evaluations
say so instead of judging them silently.
"""

from __future__ import annotations

import json
from pathlib import Path

# Fingerprint fields every method of one setting must share (the method's own hyperparameters,
# e.g. Amulet's T or LA's ratio, may differ; so may --limit: methods are compared on the
# questions they share).
SHARED_FIELDS = (
    "version", "model", "dtype", "device_type", "system_prompt_sha256", "reference_prompts",
    "dataset_sha256", "max_new_tokens", "do_sample", "temperature", "top_p", "top_k",
    "seed", "truncate_long_prompts", "repetition_penalty", "no_repeat_ngram_size",
    "use_model_generation_config",
)


def read_fingerprints(directory: Path, methods: list[str]) -> dict[str, dict | None]:
    """Each method's fingerprint from `{method}.meta.json`, or None if it cannot be read."""
    found = {}
    for method in methods:
        try:
            meta = json.loads((directory / f"{method}.meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = None
        stamp = meta.get("fingerprint") if isinstance(meta, dict) else None
        found[method] = stamp if isinstance(stamp, dict) else None
    return found


def settings_problems(fingerprints: dict[str, dict | None]) -> list[str]:
    """One line per problem: a method without a readable sidecar, or a shared field whose value
    differs between methods (`max_new_tokens: base=128, amulet=64`). Empty when all agree, and
    when no method has a sidecar (files not written by main.py: there is nothing to compare)."""
    if all(stamp is None for stamp in fingerprints.values()):
        return []
    problems = [f"{method}: no readable sidecar, its settings are unknown"
                for method, stamp in fingerprints.items() if stamp is None]
    known = {m: s for m, s in fingerprints.items() if s is not None}
    for field in SHARED_FIELDS:
        values = {m: s.get(field) for m, s in known.items()}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            listed = ", ".join(f"{m}={json.dumps(v)}" for m, v in values.items())
            problems.append(f"{field} differs between methods: {listed}")
    return problems
