"""The exception types the evaluation scripts turn into a single stderr line.

Exit codes: 2 for an EvalError (bad input: flags, files, names, a missing key), 1 for an
EvalFailure (the work itself failed: the judge API, a reward model's forward pass)."""


class EvalError(Exception):
    """Bad input or an unrecoverable condition the user can fix; never a bug."""


class EvalFailure(EvalError):
    """The inputs were fine but the work failed while running (exit code 1, not 2)."""


def exit_code(error: EvalError) -> int:
    """2 for bad input, 1 for a failure while running."""
    return 1 if isinstance(error, EvalFailure) else 2
