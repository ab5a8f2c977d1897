"""The one exception type the evaluation scripts turn into a single stderr line."""


class EvalError(Exception):
    """Bad input or an unrecoverable condition the user can fix; never a bug."""
