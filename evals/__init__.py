"""Evaluation of generated responses: GPT-4o pairwise judge and reward-model scoring.

A regular package (not a namespace package) so that ``evals.x`` always resolves to this
folder, whatever else on ``sys.path`` is called ``evals``.
"""
