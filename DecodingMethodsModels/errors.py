"""The one exception type a user is meant to read: main.py prints it as a single line."""


class UserError(Exception):
    """Bad input or an unrecoverable condition the user can fix; never a bug."""
