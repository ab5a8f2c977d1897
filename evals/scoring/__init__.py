"""Reward-model scoring and the judge-free indicators; also the reading of a run's response
files (``responses``, ``run_settings``) that the judge and the study share. Uses only the
evals root (errors, threads, jsonl_store, tables) and DecodingMethodsModels."""
