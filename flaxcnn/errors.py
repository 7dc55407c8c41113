"""The one exception type the command-line tools turn into a one-line message and a non-zero exit."""


class UserError(Exception):
    """A problem the user can fix; the message says what to do."""
