"""Pairs from "a tool the champion never saw": the independent simulator as one SEM tool.

`tests/independent_sim.py` was written apart from the project's synth (its own families: comb,
sram, contacts, isolated, serpentine; its own physics: material contrast of either sign, edge
bloom, a two-Gaussian PSF, charging, shot noise at 2.5-60 e-/px, banding). As one tool it
images every layer with bright features except contact holes, which it always images dark
(a property of the tool and layer, hence learnable; random per-image polarity flips are the
polarity input's business, not this one's). Every pair carries its noise-free rendering, so
Layout->SEM can be scored against the clean SEM.

Used by the adaptation benchmark (`bench/bench_adaptation.py`) and the loop's end-to-end test.
"""

from __future__ import annotations

from pathlib import Path

import independent_sim as sim  # tests/ is on sys.path (pytest rootdir; bench adds it)
import numpy as np

TOOL = "indep-tool-b"
FAMILIES = sim.FAMILIES


def tool_pairs(n: int, seed: int) -> list[sim.SimPair]:
    """n alignable pairs of the new tool (families in turn), reproducible from `seed`."""
    return sim.make_pairs(n, seed=seed, p_unalignable=0.0, p_reversed=0.0, p_reversed_contacts=1.0)


def crop(p: sim.SimPair) -> tuple[np.ndarray, np.ndarray]:
    """(SEM, clean SEM) cropped at the true offset: what alignment would return."""
    assert p.clean is not None
    win = (slice(p.y, p.y + sim.TPL), slice(p.x, p.x + sim.TPL))
    return np.ascontiguousarray(p.sem[win]), np.ascontiguousarray(p.clean[win])


def write_cropped_folder(dest: Path, pairs: list[sim.SimPair]) -> Path:
    """A pair folder of 250x250 crops with clean/ (shardable as it is, no alignment step)."""
    from semlayout.data.pairs import PairArrays, write_pair_folder

    def rows():  # noqa: ANN202
        for p in pairs:
            sem, clean = crop(p)
            yield PairArrays(
                id=p.id, sem=sem, layout=p.layout, pattern_type=p.family, clean=clean,
                extra={"polarity": str(p.polarity)},  # the layer's contrast, as the fab knows it
            )  # fmt: skip

    write_pair_folder(dest, rows())
    return dest


def write_raw_folder(dest: Path, pairs: list[sim.SimPair]) -> Path:
    """A pair folder of raw 304x304 SEMs and their templates (what a reviewer uploads)."""
    from semlayout.data.pairs import PairArrays, write_pair_folder

    write_pair_folder(
        dest,
        (PairArrays(id=p.id, sem=p.sem, layout=p.layout, pattern_type=p.family) for p in pairs),
    )
    return dest
