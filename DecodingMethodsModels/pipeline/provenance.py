"""Which code produced a result: the git commit of this checkout, whether it was edited, and
the versions of the software that ran it.

The git answers are None outside a git checkout (an installed copy, no git on the machine).
"""

from __future__ import annotations

import platform
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


def software_facts() -> dict:
    """Python, torch and transformers versions, the platform, torch's threads, the commit."""
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }
