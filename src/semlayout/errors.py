"""One exception type for user mistakes.

Anything raised as `SemlayoutError` is a problem with the user's input (a bad
path, a wrong image, a config key that does not exist). The CLI prints its
message on one line and exits 2; the API maps it to a 4xx. Every other
exception is a bug and keeps its traceback.
"""


class SemlayoutError(Exception):
    """A user-facing error: the message names the bad value and what was expected."""
