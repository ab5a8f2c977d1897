"""Pairwise judging of responses: the GPT-4o judge (or a local one), its protocols, the win
rates and their tables and figures. Below :mod:`evals.study`; uses :mod:`evals.scoring`'s
response files (``responses``) and the evals root (errors, threads, jsonl_store, tables)."""
