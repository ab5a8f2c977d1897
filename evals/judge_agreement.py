"""Agreement of two judges' verdicts on the same comparisons.

Run from the repository root: ``python evals/judge_agreement.py --help``. The code is
:mod:`evals.judge.agreement_cli`; see evals/README.md.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.judge.agreement_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
