"""Contrast polarity as data: what one pair says about it, and what a data set says.

Polarity is +1 when the pattern images bright, -1 when it images dark (reversed material
contrast). The aligner fits the SEM window as ``c + a*T + b*E``; the sign of the material
coefficient a is the pair's polarity and its *margin* is a z-score: how much better the
best placement with that sign fits than the best placement with the other sign, in units
of the noise of that score difference (`semlayout.data.align.score_noise` scaled by the
distance between the two fitted models). A line/space grating with duty near 1/2 imaged
with reversed contrast looks like a normal one shifted by half a pitch: there the margin
is small and the pair alone cannot say.

A data set has one polarity (it belongs to the layer and the detector, docs/physics.md),
but not every pair shows it clearly. `estimate_prior` reads it from the pairs whose own
margin is large: it is *clear* when at least `min_pairs` of them agree at a share of at
least `min_share`. Priors are kept per pattern type (gratings and contacts of one data set
may differ), falling back to the whole data set (`PriorTable`). A prior can also be fixed
by the caller (`fixed_prior`: a layer profile, a config value, a CLI option): then it is
used as given, never re-estimated.

With a clear prior an ambiguous periodic pair is placed under that polarity (its
`polarity_source` is "prior"), if the placement is unambiguous among the placements of that
polarity; without one it stays refused with reason "ambiguous_polarity".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from semlayout.errors import SemlayoutError

POLARITY_SOURCES = ("pair", "prior")
_NAMES = {"bright": 1, "+1": 1, "1": 1, "dark": -1, "-1": -1}
PRIOR_CHOICES = ("auto", "bright", "dark", "none")


def parse_polarity(value: object) -> int:
    """+1 / -1 from 1, -1, "+1", "-1", "bright", "dark" (any case); else a SemlayoutError."""
    if isinstance(value, bool):
        raise SemlayoutError(f"polarity {value!r}: expected bright (+1) or dark (-1)")
    if isinstance(value, int) and value in (1, -1):
        return value
    text = str(value).strip().lower()
    if text in _NAMES:
        return _NAMES[text]
    raise SemlayoutError(f"polarity {value!r}: expected bright (+1) or dark (-1)")


@dataclass(frozen=True)
class PolarityPrior:
    """A data set's polarity: `polarity` is +1/-1 when clear, None when not."""

    polarity: int | None = None
    share: float = 0.0  # share of the confident pairs with the majority polarity
    n: int = 0  # confident pairs it was estimated from (0 when fixed by the caller)
    source: str = "none"  # "fixed" (given by the caller), "estimated" or "none"

    @property
    def clear(self) -> bool:
        return self.polarity is not None

    def describe(self) -> str:
        if self.source == "fixed":
            return "none (fixed)" if self.polarity is None else f"fixed {self.polarity:+d}"
        if self.n == 0:
            return "no confident pairs"
        side = "+1" if self.polarity == 1 else "-1" if self.polarity == -1 else "unclear"
        return f"{side} ({self.share:.0%} of {self.n} confident pairs)"


def fixed_prior(value: object) -> PolarityPrior:
    """A prior fixed by the caller: bright/+1 or dark/-1 (see `parse_polarity`)."""
    return PolarityPrior(parse_polarity(value), 1.0, 0, "fixed")


def estimate_prior(
    polarities: Iterable[int], min_pairs: int = 5, min_share: float = 0.9
) -> PolarityPrior:
    """The prior from the polarities of confident pairs (+1/-1 each)."""
    counts = Counter(int(p) for p in polarities if p in (1, -1))
    n = sum(counts.values())
    if n == 0:
        return PolarityPrior()
    side, k = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
    share = k / n
    clear = n >= min_pairs and share >= min_share
    return PolarityPrior(side if clear else None, share, n, "estimated")


@dataclass(frozen=True)
class PriorTable:
    """Priors per pattern type with the whole data set's as the fallback."""

    overall: PolarityPrior = field(default_factory=PolarityPrior)
    by_pattern: dict[str, PolarityPrior] = field(default_factory=dict)

    def for_pattern(self, pattern_type: str | None) -> PolarityPrior:
        """The pattern type's own prior if it has confident pairs, else the overall one."""
        own = self.by_pattern.get(pattern_type or "")
        if own is None or own.n == 0 or self.overall.source == "fixed":
            return self.overall
        return own

    def describe(self) -> str:
        parts = [f"overall {self.overall.describe()}"]
        parts += [f"{k} {v.describe()}" for k, v in sorted(self.by_pattern.items()) if v.n]
        return "; ".join(parts)


def confident(result: object, min_margin: float) -> bool:
    """A QC-passed pair whose own polarity margin is at least `min_margin`."""
    margin = getattr(result, "polarity_margin", None)
    return (
        bool(getattr(result, "qc_pass", False))
        and getattr(result, "polarity_source", None) == "pair"
        and margin is not None
        and margin >= min_margin
        and getattr(result, "polarity", None) in (1, -1)
    )


def estimate_priors(
    pairs: Iterable[tuple[str, object]],
    min_margin: float,
    min_pairs: int = 5,
    min_share: float = 0.9,
) -> PriorTable:
    """Per-pattern and overall priors from (pattern_type, result) pairs; only confident
    results count (`confident`)."""
    by: dict[str, list[int]] = {}
    every: list[int] = []
    for pattern, res in pairs:
        if confident(res, min_margin):
            pol = int(getattr(res, "polarity"))  # noqa: B009 - typed as object on purpose
            by.setdefault(pattern, []).append(pol)
            every.append(pol)
    return PriorTable(
        estimate_prior(every, min_pairs, min_share),
        {k: estimate_prior(v, min_pairs, min_share) for k, v in by.items()},
    )


def prior_table(choice: str | int | None) -> PriorTable | None:
    """The CLI/config choice: "auto" (or None) = estimate from the data (returns None),
    "bright"/"dark"/+1/-1 = fixed, "none" = no prior at all (ambiguous pairs refused)."""
    if choice is None or (isinstance(choice, str) and choice.strip().lower() == "auto"):
        return None
    if isinstance(choice, str) and choice.strip().lower() == "none":
        return PriorTable(PolarityPrior(source="fixed"))
    if isinstance(choice, str) and choice.strip().lower() not in _NAMES:
        raise SemlayoutError(
            f"polarity prior {choice!r}: expected one of {', '.join(PRIOR_CHOICES)}"
        )
    return PriorTable(fixed_prior(choice))


def needs_prior(result: object, prior: PolarityPrior) -> bool:
    """Whether a first-pass result should be aligned again with the data set's `prior`: it
    was ambiguous only in polarity, or it passed with the other polarity (a weak one is
    relabelled, a confident one that moves the placement is refused as a conflict)."""
    if prior.polarity is None:
        return False
    if getattr(result, "reason", None) == "ambiguous_polarity":
        return True
    return bool(getattr(result, "qc_pass", False)) and getattr(result, "polarity", None) not in (
        None,
        prior.polarity,
    )
