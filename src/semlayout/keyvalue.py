"""`KEY=VALUE` command-line assignments (`--set train.epochs=2`, `--param data_uri=s3://b/p`).

One parser for every option that takes them: the key is everything before the first `=`,
the value is read as YAML (so `2` is an int, `true` a bool, `[a, b]` a list, and an empty
value is the empty string).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from semlayout.errors import SemlayoutError


def split_assignment(item: str, option: str, example: str) -> tuple[str, str]:
    """'KEY=VALUE' -> ('KEY', 'VALUE') with the raw value; a `SemlayoutError` otherwise."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise SemlayoutError(f"{option} {item!r}: expected KEY=VALUE, e.g. {example}")
    return key.strip(), value


def parse_assignments(items: Iterable[str], option: str, example: str) -> dict[str, Any]:
    """["a.b=2", "c=x"] -> {"a.b": 2, "c": "x"}: values read as YAML; a later key wins."""
    out: dict[str, Any] = {}
    for item in items:
        key, raw = split_assignment(item, option, example)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise SemlayoutError(f"{option} {item!r}: value {raw!r} is not valid YAML") from None
        out[key] = value
    return out
