"""The one exception type for mistakes a user can fix.

A `UserError` carries a one-line message that names the problem and the fix. The CLI prints it
without a traceback and exits with status 2; library callers can catch it like any exception.
"""


class UserError(Exception):
    """Bad input from the user: a wrong path, format, option value or selector."""
