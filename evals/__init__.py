"""Evaluation of generated responses and of decoding cost, one subpackage per job.

``judge/`` (pairwise GPT-4o or local judge), ``scoring/`` (reward models, indicators, reading
a run's responses), ``bench/`` (decode-time benchmarks), ``study/`` (the analysis); the shared
``errors``, ``threads``, ``jsonl_store`` and ``tables`` stay here. The scripts users run
(``python evals/gpt_evals.py`` ...) are thin entry points beside them. Imports go: entry points
-> study -> judge -> scoring -> this root; bench -> this root. See evals/README.md.

A regular package (not a namespace package) so that ``evals.x`` always resolves to this
folder, whatever else on ``sys.path`` is called ``evals``.
"""
