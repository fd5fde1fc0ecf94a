"""Errors a user can fix. The CLI prints them as one line and exits non-zero, never with a traceback."""


class UserError(Exception):
    """Bad input from the user: a config, a data file, a path. The message names the file, key or line."""
