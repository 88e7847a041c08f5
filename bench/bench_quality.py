"""SEM->Layout quality of a trained model against the Otsu baseline, on fresh data it never saw.

Two sources of pairs, both cropped at the true offset (so alignment is not what is measured):
- `synth`: the project's simulator (`semlayout.data.synth.generate_pair`) with a seed the
  training data did not use, default physics, default family mix;
- `independent`: `tests/independent_sim.py`, a simulator written separately from
  `sem_physics.py` (other families, another edge and noise model, dose 2.5-60 e-/px, 20 %
  reversed contrast and 70 % for dense contact holes). Reported overall, for normal
  contrast only, per family and per dose band.
The baseline is what an engineer would do instead: Gaussian blur, Otsu threshold, bright =
pattern (`semlayout.evaluation.otsu_layout_baseline`). The issue's goals: synthetic IoU >= 0.90
and clearly above Otsu; independent IoU >= 0.85 and >= Otsu + 0.05.

The model: `SEMLAYOUT_BENCH_MODEL` (checkpoint folder or models:/ URI), else the checkpoint of
the last `make run` (outputs/latest/summary.json). Without either, nothing is measured.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _model() -> str | None:
    env = os.environ.get("SEMLAYOUT_BENCH_MODEL")
    if env:
        return env
    summary = ROOT / "outputs" / "latest" / "summary.json"
    if summary.is_file():
        ckpt = json.loads(summary.read_text()).get("checkpoint")
        if ckpt and Path(ckpt).is_dir():
            return str(ckpt)
    return None


def _score(translator: Any, sems: list[np.ndarray], layouts: list[np.ndarray]) -> np.ndarray:
    from semlayout import metrics as M
    from semlayout.evaluation import otsu_layout_baseline

    preds = translator.translate("sem2layout", sems, binarize=True)  # the drawn layout users get
    return np.array(
        [
            (M.iou(p, t), M.iou(otsu_layout_baseline(s, "bright"), t))
            for p, s, t in zip(preds, sems, layouts, strict=True)
        ]
    )


def _rows(title: str, groups: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    print(f"{title:<22} {'n':>4} {'model IoU':>9} {'Otsu IoU':>9} {'margin':>7}")
    for name, v in groups.items():
        model, otsu = float(v[:, 0].mean()), float(v[:, 1].mean())
        out[name] = {
            "n": len(v),
            "model_iou": round(model, 3),
            "otsu_iou": round(otsu, 3),
            "margin": round(model - otsu, 3),
        }
        print(f"  {name:<20} {len(v):>4} {model:>9.3f} {otsu:>9.3f} {model - otsu:>+7.3f}")
    return out


def synth_quality(translator: Any, n: int, seed: int = 90210) -> dict[str, Any]:
    from semlayout.data.layouts import DEFAULT_MIX
    from semlayout.data.synth import generate_pair

    rng = np.random.default_rng(seed)
    fams = rng.choice(list(DEFAULT_MIX), size=n, p=np.array(list(DEFAULT_MIX.values())))
    sems, lays = [], []
    for i, fam in enumerate(fams):
        sem, layout, _, x, y, _ = generate_pair(np.random.default_rng([seed, i]), str(fam))
        sems.append(sem[y : y + layout.shape[0], x : x + layout.shape[1]])
        lays.append(layout)
    scores = _score(translator, sems, lays)
    groups = {"all": scores} | {f: scores[fams == f] for f in DEFAULT_MIX if (fams == f).any()}
    return _rows("synth (fresh seed)", groups)


def independent_quality(translator: Any, n: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    import independent_sim as sim

    rng = np.random.default_rng(123)
    pairs = [sim.make_pair(i, rng, p_unalignable=0.0) for i in range(n)]
    sems = [p.sem[p.y : p.y + sim.TPL, p.x : p.x + sim.TPL] for p in pairs]
    scores = _score(translator, sems, [p.layout for p in pairs])
    pol = np.array([p.polarity for p in pairs])
    fam = np.array([p.family for p in pairs])
    dose = np.array([p.dose for p in pairs])
    groups = {
        "all": scores,
        "normal contrast": scores[pol > 0],
        "reversed contrast": scores[pol < 0],
    }
    groups |= {
        f: scores[(fam == f) & (pol > 0)] for f in sim.FAMILIES if ((fam == f) & (pol > 0)).any()
    }
    for lo, hi in ((2.5, 6), (6, 15), (15, 60)):
        m = (dose >= lo) & (dose < hi) & (pol > 0)
        if m.any():
            groups[f"dose {lo:g}-{hi:g}"] = scores[m]
    return _rows("independent simulator", groups)


def main(quick: bool = False) -> dict[str, Any]:
    from semlayout.inference import Translator

    model = _model()
    if model is None:
        print("no model: run `make run` first or set SEMLAYOUT_BENCH_MODEL (nothing measured)")
        return {"model": None}
    translator = Translator.load(model)
    n = 60 if quick else 300
    print(
        f"model {model} ({translator.image_size} px); per-family rows of the independent "
        "simulator are normal-contrast images"
    )
    return {
        "model": model,
        "synth": synth_quality(translator, n),
        "independent": independent_quality(translator, n),
    }


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
