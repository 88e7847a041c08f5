"""Contrast polarity: which side of the SEM contrast is the pattern. One home for the concept.

A polarity is a property of the layer (materials and detector, docs/physics.md), so it is
data: `+1` (**bright**) the pattern is brighter than its background, `-1` (**dark**) it is
darker (reversed contrast). It travels as an int everywhere it is stored (manifests,
alignment.csv, shards, the monitoring store, checkpoints) and by name where people type it
(`--polarity bright`, `?polarity=dark`).

What a caller may ask for is a `PolarityChoice`: `bright`, `dark`, or `auto` (the model
decides per image; `semlayout.polarity_auto`). `parse_choice` accepts the names and the
numbers (`1`, `+1`, `-1`) and refuses anything else with the choices named.

Shard sets and pair folders made before polarity was recorded carry none: they read as
**+1**, because the project drew one polarity, bright, for every data set until then
(`UNKNOWN_READS_AS`); where that rule was applied is counted (`source = "assumed"`).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from semlayout.errors import SemlayoutError

BRIGHT, DARK = 1, -1
POLARITIES: tuple[int, ...] = (BRIGHT, DARK)
NAMES = {BRIGHT: "bright", DARK: "dark"}
UNKNOWN_READS_AS = BRIGHT
# share of reversed-contrast pairs when the training pipeline synthesises its own data
DEFAULT_SYNTH_REVERSE_FRACTION = 0.25


class PolarityChoice(StrEnum):
    auto = "auto"
    bright = "bright"
    dark = "dark"

    @property
    def value_or_none(self) -> int | None:
        """+1 / -1, or None for auto."""
        return None if self is PolarityChoice.auto else polarity_of_name(self.value)


CHOICES: tuple[str, ...] = tuple(c.value for c in PolarityChoice)


def polarity_of_name(name: str) -> int:
    return BRIGHT if name == "bright" else DARK


def name_of(polarity: int) -> str:
    """+1 -> "bright", -1 -> "dark"."""
    return NAMES[check_polarity(polarity)]


def check_polarity(value: object, what: str = "polarity") -> int:
    """`value` as +1 or -1 (an int, a float equal to one, or the text of one); else an error."""
    if isinstance(value, bool):
        raise SemlayoutError(f"{what} {value!r}: expected +1 (bright) or -1 (dark)")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in NAMES.values():
            return polarity_of_name(text)
        try:
            value = float(text)
        except ValueError:
            raise SemlayoutError(f"{what} {value!r}: expected +1 (bright) or -1 (dark)") from None
    if isinstance(value, int | float) and float(value) in (1.0, -1.0):
        return int(value)
    raise SemlayoutError(f"{what} {value!r}: expected +1 (bright) or -1 (dark)")


def parse_choice(value: str | int | None, what: str = "polarity") -> PolarityChoice:
    """A user's polarity request: auto, bright, dark (also 1, +1, -1); None means auto."""
    if value is None:
        return PolarityChoice.auto
    text = str(value).strip().lower()
    if text in CHOICES:
        return PolarityChoice(text)
    if text in ("1", "+1", "-1"):
        return PolarityChoice(name_of(int(text)))
    raise SemlayoutError(f"unknown {what} '{value}': expected one of {', '.join(CHOICES)}")


def read_polarity_cell(text: str | None) -> int | None:
    """A polarity column's cell: +1 / -1, or None when empty or unreadable (`?`, `nan`)."""
    if text is None or not str(text).strip():
        return None
    try:
        return check_polarity(text)
    except SemlayoutError:
        return None


def polarity_counts(values: Iterable[int]) -> dict[str, int]:
    """{"+1": n, "-1": n} in that order (JSON-friendly keys, both always present)."""
    vals = list(values)
    return {"+1": sum(v == BRIGHT for v in vals), "-1": sum(v == DARK for v in vals)}


def key(polarity: int) -> str:
    """The JSON key of a polarity: "+1" or "-1"."""
    return "+1" if check_polarity(polarity) == BRIGHT else "-1"
