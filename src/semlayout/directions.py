"""The two translation directions: one enum, used by the library, the API, the CLI and the gates.

`Direction` is a `StrEnum`, so a member equals its string (`Direction.sem2layout ==
"sem2layout"`), serialises as that string (JSON, YAML, MLflow tags) and can index a dict
keyed by plain strings.
"""

from __future__ import annotations

from enum import StrEnum

from semlayout.errors import SemlayoutError


class Direction(StrEnum):
    sem2layout = "sem2layout"  # G_A: SEM -> layout
    layout2sem = "layout2sem"  # G_B: layout -> SEM

    @property
    def generator(self) -> str:
        """The checkpoint's network for this direction: G_A or G_B."""
        return "G_A" if self is Direction.sem2layout else "G_B"

    @classmethod
    def parse(cls, value: str, what: str = "direction") -> Direction:
        """`value` as a Direction, or a `SemlayoutError` naming the choices."""
        try:
            return cls(value)
        except ValueError:
            raise SemlayoutError(
                f"unknown {what} '{value}': expected one of {', '.join(DIRECTIONS)}"
            ) from None


DIRECTIONS: tuple[Direction, ...] = tuple(Direction)
