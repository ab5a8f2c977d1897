"""Which code produced a result: the git commit of this checkout, and whether it was edited.

Both answer None outside a git checkout (an installed copy, no git on the machine).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=PROJECT_ROOT)
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit() -> str | None:
    """The checked-out commit's hash."""
    done = _git("rev-parse", "HEAD")
    return (done.stdout.strip() or None) if done and done.returncode == 0 else None


def git_dirty() -> bool | None:
    """Whether tracked files differ from that commit."""
    done = _git("status", "--porcelain", "--untracked-files=no")
    return bool(done.stdout.strip()) if done and done.returncode == 0 else None
