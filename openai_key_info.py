"""OpenAI / Azure OpenAI credentials, read only from the environment, and the client built on them.

Variables (never read from files, never written anywhere):

- ``OPENAI_API_KEY`` and optionally ``OPENAI_BASE_URL`` (any OpenAI-compatible server);
- Azure: ``AZURE_OPENAI_API_KEY``, ``AZURE_OPENAI_ENDPOINT`` and ``OPENAI_API_VERSION``
  (the judge model name is then the Azure deployment name).

Azure is used when ``AZURE_OPENAI_ENDPOINT`` is set and no explicit base URL is given;
otherwise the plain OpenAI client. A key value never appears in a message built here, and
:func:`redact` removes it (and anything shaped like an ``sk-`` key) from any other text
before that text is printed or saved.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SECRET_ENV_VARS = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY")
_KEY_SHAPE = re.compile(r"sk-[A-Za-z0-9_\-]{6,}")
_URL_USERINFO = re.compile(r"(https?://)[^/@\s]+@")
MISSING_KEY_MESSAGE = (
    "no OpenAI API key in the environment: set OPENAI_API_KEY (optionally OPENAI_BASE_URL), "
    "or AZURE_OPENAI_API_KEY with AZURE_OPENAI_ENDPOINT and OPENAI_API_VERSION"
)


class MissingKeyError(RuntimeError):
    """No usable key in the environment; the message names the variables to set."""


@dataclass(frozen=True)
class Credentials:
    """Where to send judge requests. ``repr`` never shows the key."""

    provider: str  # "openai" or "azure"
    api_key: str = field(repr=False)
    base_url: str | None = None
    api_version: str | None = None

    def describe(self) -> str:
        """A loggable, key-free summary, e.g. ``openai @ https://api.openai.com/v1``."""
        where = self.base_url or "default endpoint"
        version = f" (api-version {self.api_version})" if self.api_version else ""
        return redact(f"{self.provider} @ {where}{version}")


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """The non-empty secret values currently in ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    return [env[name] for name in SECRET_ENV_VARS if env.get(name)]


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """Remove key values, ``sk-`` shaped tokens and URL user-info from ``text``.

    >>> redact("bad key sk-abcdefgh1234 here", env={})
    'bad key sk-*** here'
    >>> redact("auth failed for hunter2hunter2", env={"OPENAI_API_KEY": "hunter2hunter2"})
    'auth failed for ***'
    >>> redact("https://user:pw@host/v1", env={})
    'https://***@host/v1'
    """
    for secret in sorted(secret_values(env), key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _KEY_SHAPE.sub("sk-***", text)
    return _URL_USERINFO.sub(r"\1***@", text)


def load_credentials(
    base_url: str | None = None, env: Mapping[str, str] | None = None
) -> Credentials:
    """Pick OpenAI or Azure from the environment; raise :class:`MissingKeyError` if no key.

    ``base_url`` (e.g. ``--judge_base_url``) overrides ``OPENAI_BASE_URL`` and forces the
    plain OpenAI client.
    """
    env = os.environ if env is None else env
    azure_endpoint = env.get("AZURE_OPENAI_ENDPOINT")
    if azure_endpoint and not base_url:
        key = env.get("AZURE_OPENAI_API_KEY")
        version = env.get("OPENAI_API_VERSION")
        if not key or not version:
            raise MissingKeyError(
                "AZURE_OPENAI_ENDPOINT is set but AZURE_OPENAI_API_KEY or OPENAI_API_VERSION "
                "is missing: set both, or unset AZURE_OPENAI_ENDPOINT to use OPENAI_API_KEY"
            )
        return Credentials("azure", key, azure_endpoint, version)
    key = env.get("OPENAI_API_KEY")
    if not key:
        raise MissingKeyError(MISSING_KEY_MESSAGE)
    return Credentials("openai", key, base_url or env.get("OPENAI_BASE_URL") or None)


def build_client(
    base_url: str | None = None,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
) -> tuple[Any, Credentials]:
    """Return ``(client, credentials)``: an ``openai.OpenAI`` or ``openai.AzureOpenAI`` client.

    The client's own retries are switched off (``max_retries=0``): the judge driver owns
    a bounded, typed retry loop so that every attempt is counted.
    """
    creds = load_credentials(base_url, env)
    import openai  # imported here so that --help and input errors stay fast

    if creds.provider == "azure":
        client = openai.AzureOpenAI(
            api_key=creds.api_key,
            azure_endpoint=creds.base_url,
            api_version=creds.api_version,
            timeout=timeout,
            max_retries=0,
        )
    else:
        client = openai.OpenAI(
            api_key=creds.api_key, base_url=creds.base_url, timeout=timeout, max_retries=0
        )
    return client, creds
