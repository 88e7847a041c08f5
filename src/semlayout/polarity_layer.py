"""A layer's polarity as pooled evidence: "polarity belongs to the layer, not the image".

One SEM alone says little about which side of its contrast is the pattern (a reversed pattern
looks much like a normal complement; only the secondary-electron rims differ), but a layer
has one polarity, so its images' evidence adds up. Each image read by `polarity=auto` gives a
log-odds of bright, `e` (`semlayout.polarity_auto.evidence`, a likelihood ratio: the head is
fitted with the polarities balanced). Per layer (a label on requests; `default` without one):

```
pooled' = clamp(pooled + clip(e, +-CLIP), +-CAP)    the layer's evidence (CAP: it can still flip)
s_dark'   = max(0, s_dark - clip(e))                Page's CUSUM of evidence for dark ...
s_bright' = max(0, s_bright + clip(e))              ... and for bright
```
`auto` decides an image on `e + pooled` (the evidence before it; `source = pooled` once the
layer has read an image, `auto` before). A **configured** layer polarity (an admin's word,
`semlayout serve --layer-polarity`, `predict --layer-polarity`) is the strongest word: the
image is translated in it (`source = layer`); its evidence is still pooled and judged.

**Drift** (a sequential test on the same evidence): the layer is expected to show its
configured polarity, else the one its evidence has established (|pooled| >= ESTABLISHED);
it is drifted while the CUSUM of the evidence for the other polarity exceeds `CUSUM_H`
log-odds (`flipped`). Page's test on log-likelihood ratios: a stream of the expected
polarity pulls the CUSUM back to 0 image by image, a flipped one adds its mean evidence per
image. CUSUM_H is calibrated on the reader's measured evidence (docs/polarity.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from semlayout.errors import SemlayoutError
from semlayout.polarity import BRIGHT, DARK

DEFAULT_LAYER = "default"
LAYER_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
CLIP = 3.0  # log-odds: no single image says more than ~20:1
CAP = 12.0  # log-odds: the pooled evidence saturates here, so a layer can still flip
ESTABLISHED = 6.0  # |pooled| from which the evidence has established the layer's polarity
CUSUM_H = 6.0  # log-odds of contrary evidence that flag a layer as drifted


def check_layer(name: str | None, what: str = "layer") -> str:
    """A layer label (`LAYER_PATTERN`), `default` for None; else a `SemlayoutError`."""
    if name is None:
        return DEFAULT_LAYER
    if not re.fullmatch(LAYER_PATTERN, name):
        raise SemlayoutError(f"{what} {name[:80]!r}: expected 1-64 characters of A-Z a-z 0-9 . _ -")
    return name


def clip(e: float) -> float:
    return max(-CLIP, min(CLIP, float(e)))


@dataclass(frozen=True)
class LayerState:
    """What the service knows of a layer's polarity (a row of the monitor store)."""

    layer: str = DEFAULT_LAYER
    configured: int | None = None  # set by an admin: the layer's polarity, the strongest word
    pooled: float = 0.0  # log-odds of bright from its images (clipped each, capped)
    n: int = 0  # images whose evidence was pooled
    s_dark: float = 0.0  # CUSUM of the evidence for dark
    s_bright: float = 0.0  # CUSUM of the evidence for bright

    @property
    def implied(self) -> int | None:
        """The polarity the pooled evidence implies (None: no evidence either way yet)."""
        if self.pooled == 0.0:
            return None
        return BRIGHT if self.pooled > 0 else DARK

    @property
    def established(self) -> int | None:
        """The polarity the evidence has established (|pooled| >= ESTABLISHED), else None."""
        return self.implied if abs(self.pooled) >= ESTABLISHED else None

    def expected(self, fallback: int | None = None) -> int | None:
        """The polarity this layer should show: configured > `fallback` (the server's
        configured layer polarity or a one-sided reference) > established."""
        if self.configured is not None:
            return self.configured
        return fallback if fallback is not None else self.established

    def flipped(self, expected: int | None) -> bool:
        """Whether its recent images read the other polarity than `expected` (drift)."""
        if expected is None:
            return False
        return (self.s_dark if expected == BRIGHT else self.s_bright) > CUSUM_H

    def fold(self, e: float) -> LayerState:
        """This state after one more image of evidence `e` (log-odds of bright)."""
        c = clip(e)
        return replace(
            self,
            pooled=max(-CAP, min(CAP, self.pooled + c)),
            n=self.n + 1,
            s_dark=max(0.0, self.s_dark - c),
            s_bright=max(0.0, self.s_bright + c),
        )

    def fold_all(self, evidences: Iterable[float]) -> LayerState:
        state = self
        for e in evidences:
            state = state.fold(e)
        return state

    def prior(self) -> LayerPrior:
        return LayerPrior(self.configured, self.pooled, self.n)

    def to_dict(self) -> dict[str, object]:
        return {
            "layer": self.layer,
            "configured": self.configured,
            "pooled_logodds": round(self.pooled, 4),
            "implied": self.implied,
            "established": self.established,
            "images": self.n,
        }


@dataclass(frozen=True)
class LayerPrior:
    """What `polarity=auto` adds to an image's own evidence (hashable: the micro-batcher
    groups images by it)."""

    configured: int | None = None
    pooled: float = 0.0
    n: int = 0  # images behind `pooled`: 0 means the image decides alone (source auto)

    @classmethod
    def of(cls, prior: int | LayerPrior | None) -> LayerPrior:
        """A configured polarity (+1 / -1), a LayerPrior, or None (nothing known)."""
        if prior is None:
            return cls()
        if isinstance(prior, LayerPrior):
            return prior
        return cls(configured=int(prior))


def pooled_polarity(evidences: Iterable[float]) -> tuple[int, float]:
    """(polarity, |pooled log-odds|) of a data set read as one layer (ties read bright)."""
    state = LayerState().fold_all(evidences)
    return (DARK if state.pooled < 0 else BRIGHT), abs(state.pooled)
