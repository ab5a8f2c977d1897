"""Decoding backends other than transformers (the hf backend, the reference).

vllm: base, pref, la, amulet and implicit PAD on vLLM (README.md beside this file). Nothing
here imports vLLM or torch at import time: the CLI checks a command before anything loads.
"""

from __future__ import annotations

from DecodingMethodsModels.errors import missing_package


def vllm_refusal(config) -> str | None:
    """Why `config` cannot run with --backend vllm (one line), or None."""
    import importlib.util

    from DecodingMethodsModels.backends.vllm_backend import refusal

    reason = refusal(config)
    if reason is None and importlib.util.find_spec("vllm") is None:
        reason = missing_package("--backend vllm", "vLLM", "pip install -r requirements-vllm.txt"
                                 " (DecodingMethodsModels/backends/README.md)")
    return reason or _version_refusal()


def vllm_refusal_of_library() -> str | None:
    """Why the library's backend="vllm" cannot run here, or None."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return missing_package("backend='vllm'", "vLLM", "pip install -r requirements-vllm.txt"
                               " (DecodingMethodsModels/backends/README.md)")
    return _version_refusal()


def _version_refusal() -> str | None:
    """Why the installed vLLM is not one this backend supports (read from its metadata)."""
    from DecodingMethodsModels.backends.vllm_engine import installed_vllm_version, version_refusal

    return version_refusal(installed_vllm_version())
