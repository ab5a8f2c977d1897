"""The analysis of finished runs: the paper's Table 1 layout, the k and strength sweeps, the
identity checks, and the paper's own numbers. The top floor of evals: it reads the outputs of
:mod:`evals.judge`, :mod:`evals.scoring` and :mod:`evals.bench`."""
