"""The one exception type a user is meant to read: main.py prints it as a single line."""

import importlib.util
import sys

# What every run needs: without it this Python is not the project's environment at all.
CORE_PACKAGE = "torch"


class UserError(Exception):
    """Bad input or an unrecoverable condition the user can fix; never a bug."""


def outside_environment() -> str | None:
    """Why this Python is not the project's environment (torch is not importable here), in
    words that say which Python to use instead; None when torch is there."""
    if importlib.util.find_spec(CORE_PACKAGE) is not None:
        return None
    return (f"{sys.executable} has no {CORE_PACKAGE}: it is not the project's environment; run "
            "the commands with .venv/bin/python (or `source .venv/bin/activate` first), or "
            "install the requirements into this Python: pip install -r requirements.txt")


def missing_package(needed_by: str, package: str, install: str) -> str:
    """The message for a `package` that `needed_by` needs: first whether this Python is the
    project's environment at all (installing one package into the wrong Python helps
    nobody), else how to install it (`install`)."""
    return outside_environment() or f"{needed_by} needs {package}, which is not installed: " \
        f"{install}"
