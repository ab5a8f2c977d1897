"""Whether the model hub can be reached, asked once and quickly.

Offline, huggingface_hub retries each request for about 50 s, printing a line per retry,
before a hub id fails. A few seconds' TCP connect tells the same thing: when it fails, the
process switches to HF_HUB_OFFLINE=1, so a model in the local cache still loads and any other
hub id fails at once with one line.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from urllib.parse import urlsplit

CONNECT_SECONDS = 3.0  # the whole check, name resolution included
HF_ENDPOINT = "https://huggingface.co"


def hub_address() -> tuple[str, int]:
    """(host, port) a hub request would open first: the HTTPS proxy if one is set, else the
    hub endpoint (HF_ENDPOINT, default huggingface.co:443)."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlsplit(proxy or os.environ.get("HF_ENDPOINT") or HF_ENDPOINT)
    default_port = 443 if url.scheme == "https" else 80
    return url.hostname or "", url.port or default_port


def can_connect(host: str, port: int, seconds: float = CONNECT_SECONDS) -> bool:
    """True if a TCP connection to host:port opens within `seconds` (DNS lookup included:
    it has no timeout of its own, so the attempt runs in a thread that is not waited for)."""
    result = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=seconds).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(seconds)
    return bool(result and result[0])


_found_unreachable: str | None = None  # set once the check has found the hub unreachable


def offline_reason() -> str | None:
    """Why the hub is not to be asked, or None when it can be: HF_HUB_OFFLINE (or
    TRANSFORMERS_OFFLINE) is set, or the hub cannot be reached now, in which case
    HF_HUB_OFFLINE=1 is set for this process (in the environment, and in huggingface_hub if
    it is already imported)."""
    global _found_unreachable
    if _found_unreachable is not None:
        return _found_unreachable
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE"):
            return f"{name}=1 is set"
    host, port = hub_address()
    if can_connect(host, port):
        return None
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    _found_unreachable = f"{host}:{port} cannot be reached from this machine"
    return _found_unreachable


def in_hub_cache(repo_id: str) -> bool:
    """True if the local hub cache holds a config.json of `repo_id` (nothing is downloaded)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def offline_and_not_cached(repo_id: str) -> str | None:
    """Why `repo_id` cannot be loaded at all (the hub cannot be asked and the local cache does
    not hold it), or None if it may load."""
    reason = offline_reason()
    if reason is None or in_hub_cache(repo_id):
        return None
    return f"it is not in the local hub cache and the hub cannot be asked (offline: {reason})"
