"""One exception type for user mistakes, and one way to say what a validation error found.

Anything raised as `SemlayoutError` is a problem with the user's input (a bad
path, a wrong image, a config key that does not exist). The CLI prints its
message on one line and exits 2; the API maps it to a 4xx. The CLI also prints
the path errors of the environment (not found, permission denied, a file where a
folder is needed, and the reverse) on one line and exits 1. Every other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class SemlayoutError(Exception):
    """A user-facing error: the message names the bad value and what was expected."""


def describe_errors(errors: Iterable[Mapping[str, Any]], skip: tuple[str, ...] = ()) -> str:
    """pydantic's error list (`err.errors()`) as one line: `a.b: msg; unknown key 'c'`.

    `skip` drops location parts that name no key of the user's (FastAPI's "body").
    """
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in skip) or "<root>"
        if e.get("type") == "extra_forbidden":
            parts.append(f"unknown key '{loc}'")
        else:
            parts.append(f"{loc}: {e.get('msg')}")
    return " ".join("; ".join(parts).split())  # one line, whatever the messages hold


def validation_error(err: Any, what: str) -> SemlayoutError:
    """A pydantic `ValidationError` about `what` (e.g. "loop config") as a `SemlayoutError`."""
    return SemlayoutError(f"invalid {what}: {describe_errors(err.errors())}")
