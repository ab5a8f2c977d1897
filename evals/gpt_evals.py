"""GPT-4o (or a local judge's) pairwise win rates of the target method against each baseline.

Run from the repository root: ``python evals/gpt_evals.py --help``. The code is
:mod:`evals.judge.gpt_cli`; see evals/README.md.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.judge.gpt_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
