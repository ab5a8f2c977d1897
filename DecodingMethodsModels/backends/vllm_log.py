"""vLLM's log as this project shows it: the project's own lines, vLLM's warnings and errors on
stderr, and vLLM's known harmless warnings (KNOWN_HARMLESS, each explained in README.md beside
this file, "vLLM's log") left out and counted.

vLLM prints its log on stdout at level INFO by default (about 30 lines a run). `quiet_vllm_log`
points vLLM at `vllm_logging.json` (stderr, level WARNING, the filter below) through
VLLM_LOGGING_CONFIG_PATH, which vLLM re-reads whenever it configures logging, in this process
and in the processes it starts; a user who sets VLLM_LOGGING_CONFIG_PATH, VLLM_LOGGING_LEVEL or
VLLM_CONFIGURE_LOGGING keeps vLLM's own behaviour. Errors always pass.
"""

from __future__ import annotations

import logging
import logging.config
import os
import re
import warnings
from pathlib import Path

CONFIG_FILE = Path(__file__).with_name("vllm_logging.json")
USER_SETTINGS = ("VLLM_LOGGING_CONFIG_PATH", "VLLM_LOGGING_LEVEL", "VLLM_CONFIGURE_LOGGING")

# (what the line says, a pattern matching it): the README explains why each is harmless here
KNOWN_HARMLESS = (
    ("chunked prefill off", r"does not officially support disabling chunked prefill"),
    ("global seed in process", r"The global random seed is set to .* "
                               r"VLLM_ENABLE_V1_MULTIPROCESSING is set to False"),
    ("batched-token budget", r"max_num_batched_tokens \(\d+\) exceeds max_num_seqs \* "
                             r"max_model_len"),
    ("eager mode", r"Enforce eager set, disabling torch\.compile"),
    ("eager mode", r"Inductor compilation was disabled by user settings"),
    ("Triton on CPU", r"Triton is not installed\. triton-cpu is expected"),
    ("Triton on CPU", r"Triton is installed, but doesn't include CPU backend"),
    ("CPU allocator hint", r"lib(tcmalloc|iomp) is not found in LD_PRELOAD"),
    ("custom scheduler", r"[Aa]sync scheduling .*(not supported|disabled|turned off)"),
)
_PATTERNS = tuple(re.compile(pattern) for _, pattern in KNOWN_HARMLESS)
# Python warnings raised while vLLM imports (torch's own deprecations, not this project's)
HARMLESS_PY_WARNINGS = (r"`torch\.distributed\.reduce_op` is deprecated",)


def is_known_harmless(message: str, level: int) -> bool:
    """True for a vLLM line below ERROR that matches a KNOWN_HARMLESS pattern."""
    return level < logging.ERROR and any(p.search(message) for p in _PATTERNS)


class KnownHarmless(logging.Filter):
    """Drops vLLM's known harmless warnings (vllm_logging.json names it), counting them."""

    hidden = 0

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: show it as it is
            return True
        if is_known_harmless(message, record.levelno):
            KnownHarmless.hidden += 1
            return False
        return True


def quiet_vllm_log() -> bool:
    """Route vLLM's log through vllm_logging.json, before vLLM is imported (some lines come
    at import, before vLLM configures any handler). False, and nothing changed, when the user
    configured vLLM's logging; a VLLM_LOGGING_CONFIG_PATH naming this file (inherited from a
    process that called this) is ours, and the configuration is applied here too."""
    for pattern in HARMLESS_PY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    ours = os.environ.get("VLLM_LOGGING_CONFIG_PATH") == str(CONFIG_FILE)  # a parent set it
    if not ours and any(name in os.environ for name in USER_SETTINGS):
        return False
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(CONFIG_FILE)
    import json

    logging.config.dictConfig(json.loads(CONFIG_FILE.read_text()))
    return True


def hidden_summary() -> str | None:
    """One line saying how many known harmless vLLM warnings were left out, or None."""
    if not KnownHarmless.hidden:
        return None
    return (f"vLLM: {KnownHarmless.hidden} known harmless warning(s) not shown "
            "(DecodingMethodsModels/backends/README.md, \"vLLM's log\")")
