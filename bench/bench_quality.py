"""SEM->Layout quality of a trained model on fresh data it never saw, in both contrast polarities.

Sources of pairs, all cropped at the true offset (so alignment is not what is measured):
- `synth`: the project's simulator (`semlayout.data.synth.generate_pair`) with a seed the
  training data did not use, default physics and family mix, half of the images in reversed
  contrast (polarity -1) so every family has both;
- `test split`: the test split of the shards the model was evaluated on (the last `make run`'s,
  from outputs/latest/evaluation.json), its pairs in their recorded polarity;
- `independent`: `tests/independent_sim.py`, a simulator written separately from
  `sem_physics.py` (other families, another edge and noise model, dose 2.5-60 e-/px, 20 %
  reversed contrast and 70 % for dense contact holes). Per family and dose band on normal
  contrast, as before.
Each image is translated twice: in its true polarity (`given`, what a caller who knows the
layer gets) and with `polarity=auto` (decided per image, no layer prior); `auto ok` is how
often auto chose the true polarity. The baseline is what an engineer would do instead:
Gaussian blur, Otsu threshold, the true polarity's side = pattern
(`semlayout.evaluation.otsu_layout_baseline`).

Drift (`drift`): a served layer declared bright (`--layer-polarity bright`) receives a stream
of normal-contrast and a stream of reversed-contrast fresh synth SEMs; the share of images the
drift monitor flags (grey-level features against the model's reference, and the polarity the
stream's recent images read, `semlayout.monitoring.drift`): each stream starts on a fresh
server, so its first images are judged on a short window.

Must-show lines (issue 16) are printed at the end, against today's normal-contrast numbers
(`TODAY`: the model `make run` trained before polarity conditioning). With
`SEMLAYOUT_BENCH_TODAY` (that model's checkpoint: a `make run` of main before issue 16) it is
also scored on the same pairs (column `today`: one polarity, bright, whatever the image), so
the normal-contrast comparison is on identical images, measured in the same run.

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
TODAY = {"test split": 0.875, "independent": 0.798}  # normal-contrast IoU before issue 16
COLS = ("given", "auto", "auto_ok", "otsu", "today")
_TODAY: dict[str, Any] = {"tr": None}  # today's model (SEMLAYOUT_BENCH_TODAY), when given


def _latest() -> dict[str, Any]:
    summary = ROOT / "outputs" / "latest" / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else {}


def _model() -> str | None:
    env = os.environ.get("SEMLAYOUT_BENCH_MODEL")
    if env:
        return env
    ckpt = _latest().get("checkpoint")
    return str(ckpt) if ckpt and Path(ckpt).is_dir() else None


def _score(
    tr: Any, sems: list[np.ndarray], layouts: list[np.ndarray], pol: np.ndarray
) -> np.ndarray:
    """Per image: IoU given the true polarity (NaN where the model refuses it), IoU with auto,
    auto chose the true polarity (0/1), Otsu IoU with the true polarity, IoU of today's model
    (NaN without one)."""
    from semlayout import metrics as M
    from semlayout.evaluation import otsu_layout_baseline
    from semlayout.polarity import POLARITIES

    given = np.full(len(sems), np.nan)
    for p in POLARITIES:
        idx = np.flatnonzero(pol == p)
        if len(idx) and p in tr.polarities:
            out = tr.translate("sem2layout", [sems[i] for i in idx], binarize=True, polarity=p)
            given[idx] = [M.iou(o, layouts[i]) for o, i in zip(out, idx, strict=True)]
    auto = tr.translate_detailed("sem2layout", sems, binarize=True, polarity="auto")
    today = np.full(len(sems), np.nan)
    if _TODAY["tr"] is not None:
        old = _TODAY["tr"].translate("sem2layout", sems, binarize=True)
        today[:] = [M.iou(o, lay) for o, lay in zip(old, layouts, strict=True)]
    return np.array(
        [
            (
                given[i],
                M.iou(a.output, layouts[i]),
                float(a.decision.polarity == pol[i]),
                M.iou(
                    otsu_layout_baseline(sems[i], "bright" if pol[i] > 0 else "dark"), layouts[i]
                ),
                today[i],
            )
            for i, a in enumerate(auto)
        ]
    )


def _rows(title: str, groups: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    head = f"{'given':>7} {'auto':>7} {'auto-gvn':>8} {'auto ok':>7} {'Otsu':>6} {'today':>6}"
    print(f"{title:<26} {'n':>4} {head}")
    for name, v in groups.items():
        if not len(v):
            continue
        means = {
            c: float(np.nanmean(v[:, k])) if np.isfinite(v[:, k]).any() else None
            for k, c in enumerate(COLS)
        }
        out[name] = {
            "n": len(v),
            **{k: None if x is None else round(x, 4) for k, x in means.items()},
        }
        g, a = means["given"], means["auto"]
        gap = "" if g is None or a is None else f"{a - g:+8.3f}"
        gs = "refused" if g is None else f"{g:7.3f}"
        td = "" if means["today"] is None else f"{means['today']:6.3f}"
        print(
            f"  {name:<24} {len(v):>4} {gs:>7} {a:7.3f} {gap:>8} {means['auto_ok']:7.1%} "
            f"{means['otsu']:6.3f} {td:>6}"
        )
    return out


def _groups(scores: np.ndarray, pol: np.ndarray, fam: np.ndarray) -> dict[str, np.ndarray]:
    groups = {"all": scores, "normal": scores[pol > 0], "reversed": scores[pol < 0]}
    for f in sorted(set(fam.tolist())):
        for p, tag in ((1, "normal"), (-1, "reversed")):
            groups[f"{f} {tag}"] = scores[(fam == f) & (pol == p)]
    return groups


def fresh_synth(
    n: int, seed: int, reverse_fraction: float
) -> tuple[list, list, np.ndarray, np.ndarray]:
    from semlayout.data.layouts import DEFAULT_MIX
    from semlayout.data.sem_physics import PhysicsRanges
    from semlayout.data.synth import generate_pair

    ranges = PhysicsRanges(reverse_fraction=reverse_fraction)
    rng = np.random.default_rng(seed)
    fams = rng.choice(list(DEFAULT_MIX), size=n, p=np.array(list(DEFAULT_MIX.values())))
    sems, lays, pols = [], [], []
    for i, fam in enumerate(fams):
        sem, layout, _, x, y, meta = generate_pair(
            np.random.default_rng([seed, i]), str(fam), ranges=ranges
        )
        sems.append(sem[y : y + layout.shape[0], x : x + layout.shape[1]])
        lays.append(layout)
        pols.append(int(meta["params"].polarity))
    return sems, lays, np.array(pols), fams


def synth_quality(tr: Any, n: int, seed: int = 90210) -> dict[str, Any]:
    sems, lays, pol, fams = fresh_synth(n, seed, reverse_fraction=0.5)
    return _rows("synth (fresh seed)", _groups(_score(tr, sems, lays, pol), pol, fams))


def split_quality(tr: Any, shards: str | None, n: int) -> dict[str, Any] | None:
    from semlayout.data.shards import load_split_arrays
    from semlayout.evaluation import select_indices

    if not shards or not Path(shards).is_dir():
        print("test split: no shards recorded by the last `make run` (skipped)")
        return None
    d = load_split_arrays(shards, "test")
    idx = select_indices(d["families"], n)
    pol, fam = d["polarity"][idx].astype(int), d["families"][idx]
    scores = _score(tr, list(d["sem"][idx]), list(d["layout"][idx]), pol)
    return _rows(f"test split ({Path(shards).name})", _groups(scores, pol, fam))


def independent_quality(tr: Any, n: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    import independent_sim as sim

    rng = np.random.default_rng(123)
    pairs = [sim.make_pair(i, rng, p_unalignable=0.0) for i in range(n)]
    sems = [p.sem[p.y : p.y + sim.TPL, p.x : p.x + sim.TPL] for p in pairs]
    pol = np.array([p.polarity for p in pairs])
    fam, dose = np.array([p.family for p in pairs]), np.array([p.dose for p in pairs])
    scores = _score(tr, sems, [p.layout for p in pairs], pol)
    groups = _groups(scores, pol, fam)
    for lo, hi in ((2.5, 6), (6, 15), (15, 60)):
        groups[f"dose {lo:g}-{hi:g} normal"] = scores[(dose >= lo) & (dose < hi) & (pol > 0)]
    return _rows("independent simulator", groups)


def drift_quality(tr: Any, reference: str | None, n: int) -> dict[str, Any] | None:
    """Flagged share of a normal and of a reversed stream, the layer declared bright."""
    from semlayout.monitoring.drift import detectors_from_reference

    if not reference or not Path(reference).exists() or len(tr.polarities) < 2:
        print("drift: needs the model's reference shards and a model of both polarities (skipped)")
        return None
    out: dict[str, Any] = {"expected_polarity": 1}
    print(
        f"{'drift, layer bright':<26} {'n':>4} {'flagged':>8} {'by polarity':>12} "
        f"{'by features':>12}"
    )
    for name, rf, seed in (("normal stream", 0.0, 4242), ("reversed stream", 1.0, 4343)):
        # a server started for the stream: its polarity window starts empty
        det = detectors_from_reference(reference, layer_polarity=1)["sem2layout"]
        sems, _, _, _ = fresh_synth(n, seed, reverse_fraction=rf)
        done = tr.translate_detailed("sem2layout", sems, polarity="auto")
        feats = [det.check(s) for s in sems]
        res = [det.with_polarity(f, t.decision) for f, t in zip(feats, done, strict=True)]
        by_pol = np.mean(
            [
                r.worst_feature == "polarity" or (r.drifted and not f.drifted)
                for r, f in zip(res, feats, strict=True)
            ]
        )
        flagged, by_feat = np.mean([r.drifted for r in res]), np.mean([f.drifted for f in feats])
        out[name] = {
            "n": n,
            "flagged": float(flagged),
            "by_polarity": float(by_pol),
            "by_features": float(by_feat),
        }
        print(f"  {name:<24} {n:>4} {flagged:8.1%} {by_pol:12.1%} {by_feat:12.1%}")
    return out


def _must_show(res: dict[str, Any]) -> None:
    print("\nissue 16, must show:")
    for src in ("synth", "test split", "independent"):
        block = res.get(src)
        if not block:
            continue
        a = block["all"]
        norm, rev = block.get("normal", {}), block.get("reversed", {})
        if a["given"] is not None:
            print(
                f"  {src}: auto {a['auto']:.3f} vs given {a['given']:.3f} "
                f"(gap {a['auto'] - a['given']:+.3f}; bar |gap| <= 0.02)"
            )
        if norm and rev and norm.get("auto"):
            print(
                f"  {src}: reversed / normal (auto) {rev['auto'] / norm['auto']:.2f} (bar >= 0.90)"
            )
        if src in TODAY and norm.get("given") is not None:
            print(
                f"  {src}: normal-contrast IoU {norm['given']:.3f} vs today's {TODAY[src]:.3f} "
                f"({norm['given'] - TODAY[src]:+.3f}; bar >= -0.01)"
            )
        if norm.get("today") is not None and norm.get("auto") is not None:
            print(
                f"  {src}: normal-contrast IoU (auto) {norm['auto']:.3f} vs today's model on "
                f"the same pairs {norm['today']:.3f} ({norm['auto'] - norm['today']:+.3f}; "
                "bar >= -0.01)"
            )
    d = res.get("drift")
    if d:
        rev, norm = d["reversed stream"]["flagged"], d["normal stream"]["flagged"]
        print(
            f"  drift: reversed stream flagged {rev:.1%} (bar >= 90 %), normal stream {norm:.1%} "
            "(bar <= 5 %)"
        )


def main(quick: bool = False) -> dict[str, Any]:
    from semlayout.inference import Translator

    model = _model()
    if model is None:
        print("no model: run `make run` first or set SEMLAYOUT_BENCH_MODEL (nothing measured)")
        return {"model": None}
    tr = Translator.load(model)
    today = os.environ.get("SEMLAYOUT_BENCH_TODAY")
    _TODAY["tr"] = Translator.load(today) if today else None
    n = 60 if quick else 300
    shards = os.environ.get("SEMLAYOUT_BENCH_SHARDS")
    if not shards:
        ev = ROOT / "outputs" / "latest" / "evaluation.json"
        shards = (
            json.loads(ev.read_text()).get("metrics", {}).get("shards") if ev.is_file() else None
        )
    print(
        f"model {model} ({tr.image_size} px, polarities {list(tr.polarities)}); IoU of the drawn "
        f"layout; shards {shards}"
    )
    res: dict[str, Any] = {"model": model, "polarities": list(tr.polarities), "today": today}
    res["synth"] = synth_quality(tr, n)
    res["test split"] = split_quality(tr, shards, n)
    res["independent"] = independent_quality(tr, n)
    res["drift"] = drift_quality(tr, shards, 40 if quick else 200)
    _must_show(res)
    return res


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
