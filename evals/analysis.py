"""The analysis of finished runs: Table 1, the k and strength sweeps, the identity checks.

Run from the repository root: ``python evals/analysis.py --help``. The code is
:mod:`evals.study.analysis_cli`; see evals/README.md.
"""

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.study.analysis_cli import main  # noqa: E402

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
