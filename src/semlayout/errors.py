"""One exception type for user mistakes.

Anything raised as `SemlayoutError` is a problem with the user's input (a bad
path, a wrong image, a config key that does not exist). The CLI prints its
message on one line and exits 2; the API maps it to a 4xx. The CLI also prints
the path errors of the environment (not found, permission denied, a file where a
folder is needed, and the reverse) on one line and exits 1. Every other
exception is a bug and keeps its traceback.
"""


class SemlayoutError(Exception):
    """A user-facing error: the message names the bad value and what was expected."""
