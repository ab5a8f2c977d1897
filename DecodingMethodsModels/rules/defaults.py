"""Defaults the public ARGS and PAD codes fix, torch-free: the CLI checks run configs with
them before any weights load."""

DEFAULT_SAMPLE_TEMP = 0.7  # the public codes' default temperature
