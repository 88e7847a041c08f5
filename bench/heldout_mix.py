"""The held-out mix the confidence is judged on (issue 17): pairs the model never saw, many of
them on purpose outside what it learned, each with its true layout (and noise-free SEM where
the simulator has one). Every SEM is a 250x250 crop; nothing here is aligned by the model.

Sources (`SOURCES`), each drawn from its own seed so a source can be grown without changing
the others:
- `test split`: the test split of the shards the model was evaluated on (in distribution);
- `independent`: `tests/independent_sim.py` (other families, another edge / noise model,
  dose 2.5-60 e-/px, 20 % reversed contrast, 70 % for contact holes);
- `unseen family`: a pattern no training family draws — 45-degree lines and rings (curved
  and diagonal edges; every training family is Manhattan), rendered by the project's physics;
- `low dose`: the project's synth at 1-3 e-/px (training draws 2-3000, log-uniform);
- `reversed`: the project's synth in reversed contrast (polarity -1), translated with
  polarity unknown (`auto`, no layer prior);
- `shifted`: the project's synth cropped 3-8 px off the template position (the model was
  trained on crops at the template's place); the truth is the design under the crop.

`mix(shards, n_per_source, seed)` -> list of `Pair`. The model translates every pair with
`polarity="auto"` and no prior, as the API's default does.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("test split", "independent", "unseen family", "low dose", "reversed", "shifted")
T = 250


@dataclass
class Pair:
    id: str
    source: str
    family: str
    sem: np.ndarray  # (250, 250) uint8
    layout: np.ndarray  # (250, 250) uint8 {0, 255}: the design under the SEM
    polarity: int  # the true contrast polarity (+1 bright, -1 dark)
    clean: np.ndarray | None = None  # noise-free SEM (synthetic sources)


def unseen_field(rng: np.random.Generator, size: int = 304) -> np.ndarray:
    """(size, size) {0, 1}: diagonal lines at 45 degrees (either way) or concentric rings."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    pitch = float(rng.uniform(14, 50))
    duty = float(rng.uniform(0.35, 0.65))
    if rng.random() < 0.5:
        u = (xx + yy) if rng.random() < 0.5 else (xx - yy)
        phase = (u / np.sqrt(2) + rng.uniform(0, pitch)) % pitch
    else:
        cx, cy = rng.uniform(0, size, 2)
        phase = (np.hypot(xx - cx, yy - cy) + rng.uniform(0, pitch)) % pitch
    return (phase < duty * pitch).astype(np.uint8)


def _synth(
    seed: int, i: int, params: dict[str, float] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, dict]:
    from semlayout.data.layouts import DEFAULT_MIX
    from semlayout.data.synth import generate_pair

    rng = np.random.default_rng([seed, i])
    fams = list(DEFAULT_MIX)
    fam = str(rng.choice(fams, p=np.array([DEFAULT_MIX[f] for f in fams])))
    return generate_pair(rng, fam, params=params)


def test_split(shards: str | Path, n: int) -> list[Pair]:
    from semlayout.data.shards import load_split_arrays
    from semlayout.evaluation import select_indices

    d = load_split_arrays(shards, "test")
    idx = select_indices(d["families"], n)
    pol = d.get("polarity", np.ones(len(d["ids"]), int))
    clean = d.get("clean")
    return [
        Pair(
            f"test-{d['ids'][i]}",
            "test split",
            str(d["families"][i]),
            d["sem"][i],
            d["layout"][i],
            int(pol[i]),
            None if clean is None else clean[i],
        )
        for i in idx
    ]


def independent(n: int, seed: int) -> list[Pair]:
    sys.path.insert(0, str(ROOT / "tests"))
    import independent_sim as sim

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = sim.make_pair(i, rng, p_unalignable=0.0)
        sem = p.sem[p.y : p.y + T, p.x : p.x + T]
        out.append(Pair(f"ind-{i}", "independent", p.family, sem, p.layout, p.polarity))
    return out


def unseen(n: int, seed: int) -> list[Pair]:
    from semlayout.data.synth import render_sem_pair

    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        field = unseen_field(rng)
        x, y = (int(v) for v in rng.integers(2, 53, size=2))
        sem, lay, clean, x, y, _ = render_sem_pair(field, x, y, rng, {"polarity": 1})
        crop = (slice(y, y + T), slice(x, x + T))
        out.append(Pair(f"unseen-{i}", "unseen family", "diagonal", sem[crop], lay, 1, clean[crop]))
    return out


def synth_variant(n: int, seed: int, source: str) -> list[Pair]:
    """`low dose`, `reversed` or `shifted` pairs of the project's simulator."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 7])
        params: dict[str, float] = {"polarity": 1}
        if source == "low dose":
            params["dose"] = float(rng.uniform(1.0, 3.0))
        if source == "reversed":
            params["polarity"] = -1
        sem, _, clean, x, y, meta = _synth(seed, i, params)
        if source == "shifted":  # 3-8 px off, either way, inside the 304 px field
            d = rng.integers(3, 9, size=2) * rng.choice([-1, 1], size=2)
            x, y = int(np.clip(x + d[0], 0, 304 - T)), int(np.clip(y + d[1], 0, 304 - T))
        crop = (slice(y, y + T), slice(x, x + T))
        lay = (meta["field"][crop] * 255).astype(np.uint8)
        pol = int(params["polarity"])
        out.append(
            Pair(f"{source[:3]}-{i}", source, meta["family"], sem[crop], lay, pol, clean[crop])
        )
    return out


def mix(shards: str | Path | None, n: int, seed: int = 1717) -> list[Pair]:
    """`n` pairs of every source (`test split` only when `shards` is given)."""
    pairs: list[Pair] = []
    if shards is not None and Path(shards).is_dir():
        pairs += test_split(shards, n)
    pairs += independent(n, seed)
    pairs += unseen(n, seed + 1)
    for k, source in enumerate(("low dose", "reversed", "shifted")):
        pairs += synth_variant(n, seed + 2 + k, source)
    return pairs


def in_distribution(n: int, seed: int, reverse_fraction: float = 0.25) -> list[Pair]:
    """Fresh pairs as the training data was drawn (default mix, `make run`'s reversed share)."""
    from semlayout.data.layouts import DEFAULT_MIX
    from semlayout.data.sem_physics import PhysicsRanges
    from semlayout.data.synth import generate_pair

    ranges = PhysicsRanges(reverse_fraction=reverse_fraction)
    fams = list(DEFAULT_MIX)
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        fam = str(rng.choice(fams, p=np.array([DEFAULT_MIX[f] for f in fams])))
        sem, lay, clean, x, y, meta = generate_pair(rng, fam, ranges=ranges)
        crop = (slice(y, y + T), slice(x, x + T))
        pol = int(meta["params"].polarity)
        out.append(
            Pair(f"ind-{seed}-{i}", "in distribution", fam, sem[crop], lay, pol, clean[crop])
        )
    return out
