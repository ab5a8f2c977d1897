"""Reward-model scores of every method's responses: several scorers and heads in one table.

Run from the repository root: ``python evals/rm_evals.py --help``. The code is
:mod:`evals.scoring.rm_cli`; see evals/README.md.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.scoring.rm_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
