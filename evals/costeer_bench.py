"""CoSteer's cost benchmark: tokens/s of costeer (a quarter-size SLM) against amulet.

Run from the repository root: ``python evals/costeer_bench.py --help``. The code is
:mod:`evals.bench.costeer_bench`; see evals/README.md.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.bench.costeer_bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
