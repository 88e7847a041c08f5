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
Each image is translated in both polarities and its own polarity evidence read once
(`bench.polarity_streams`): `given` is the true polarity's output (a caller who knows the
layer), `auto` the image alone deciding (the mixed per-image case), `pooled` streams of one
layer each (per family and polarity, random order, the layer's evidence starting from
nothing, first images included), with the head training now fits (refitted on fresh
synthetic SEMs of both polarities for the checkpoint measured); `ok` how often each chose the
true polarity, `ok-ckpt` auto with the checkpoint's own head. The baseline is what an
engineer would do instead: Gaussian blur, Otsu threshold, the true polarity's side = pattern
(`semlayout.evaluation.otsu_layout_baseline`).

Drift (`drift`): a layer configured bright receives a stream of normal-contrast and a stream
of reversed-contrast fresh synth SEMs, each from a fresh layer state; the share of images
flagged by the grey-level features against the model's reference or by the layer's
sequential test on the images' evidence (`semlayout.polarity_layer`, as the server keeps it).

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

from bench import polarity_streams

ROOT = Path(__file__).resolve().parents[1]
TODAY = {"test split": 0.875, "independent": 0.798}  # normal-contrast IoU before issue 16
COLS = ("given", "auto", "auto_ok", "pooled", "pooled_ok", "auto_ok_ckpt", "otsu", "today")
_TODAY: dict[str, Any] = {"tr": None}  # today's model (SEMLAYOUT_BENCH_TODAY), when given
_HEADS: dict[str, Any] = {}  # polarity heads: "checkpoint" (its own), "refit" (fresh synth)


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
    tr: Any, sems: list[np.ndarray], layouts: list[np.ndarray], pol: np.ndarray, fam: np.ndarray
) -> np.ndarray:
    """Per image (columns `COLS`): IoU given the true polarity (NaN where the model refuses
    it), with auto (the image alone), auto chose the truth, IoU in a pooled layer stream
    (`polarity_streams`), it chose the truth, auto with the checkpoint's own head chose the
    truth (before the refit), Otsu IoU with the true polarity, IoU of today's model."""
    from semlayout import metrics as M
    from semlayout.evaluation import otsu_layout_baseline

    read = polarity_streams.read_all(tr, sems, _HEADS)
    sc = polarity_streams.scores(read, layouts, pol, fam, "refit")
    before = (np.where(read["e"]["checkpoint"] >= 0, 1, -1) == pol).astype(float)
    today = np.full(len(sems), np.nan)
    if _TODAY["tr"] is not None:
        old = _TODAY["tr"].translate("sem2layout", sems, binarize=True)
        today[:] = [M.iou(o, lay) for o, lay in zip(old, layouts, strict=True)]
    otsu = [
        M.iou(otsu_layout_baseline(sems[i], "bright" if pol[i] > 0 else "dark"), layouts[i])
        for i in range(len(sems))
    ]
    cols = [sc["given"], sc["auto"], sc["auto_ok"], sc["pooled"], sc["pooled_ok"], before]
    return np.stack([*cols, np.array(otsu), today], axis=1)


def _rows(title: str, groups: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    head = (
        f"{'given':>6} {'auto':>6} {'ok':>6} {'pooled':>6} {'ok':>6} {'pl-gvn':>6} "
        f"{'ok-ckpt':>7} {'Otsu':>6} {'today':>6}"
    )
    print(f"{title:<30} {'n':>4} {head}")
    for name, v in groups.items():
        if not len(v):
            continue
        m = {
            c: float(np.nanmean(v[:, k])) if np.isfinite(v[:, k]).any() else None
            for k, c in enumerate(COLS)
        }
        out[name] = {"n": len(v), **{k: None if x is None else round(x, 4) for k, x in m.items()}}

        def f(x: float | None, fmt: str = "6.3f") -> str:
            return "     -" if x is None else format(x, fmt)

        gap = None if m["given"] is None else m["pooled"] - m["given"]  # type: ignore[operator]
        print(
            f"  {name:<28} {len(v):>4} {f(m['given'])} {f(m['auto'])} {f(m['auto_ok'], '6.1%')} "
            f"{f(m['pooled'])} {f(m['pooled_ok'], '6.1%')} {f(gap, '+6.3f')} "
            f"{f(m['auto_ok_ckpt'], '7.1%')} {f(m['otsu'])} {f(m['today'])}"
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
    return _rows("synth (fresh seed)", _groups(_score(tr, sems, lays, pol, fams), pol, fams))


def split_quality(tr: Any, shards: str | None, n: int) -> dict[str, Any] | None:
    from semlayout.data.shards import load_split_arrays
    from semlayout.evaluation import select_indices

    if not shards or not Path(shards).is_dir():
        print("test split: no shards recorded by the last `make run` (skipped)")
        return None
    d = load_split_arrays(shards, "test")
    idx = select_indices(d["families"], n)
    pol, fam = d["polarity"][idx].astype(int), d["families"][idx]
    scores = _score(tr, list(d["sem"][idx]), list(d["layout"][idx]), pol, fam)
    return _rows(f"test split ({Path(shards).name})", _groups(scores, pol, fam))


def independent_quality(tr: Any, n: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    import independent_sim as sim

    rng = np.random.default_rng(123)
    pairs = [sim.make_pair(i, rng, p_unalignable=0.0) for i in range(n)]
    sems = [p.sem[p.y : p.y + sim.TPL, p.x : p.x + sim.TPL] for p in pairs]
    pol = np.array([p.polarity for p in pairs])
    fam, dose = np.array([p.family for p in pairs]), np.array([p.dose for p in pairs])
    scores = _score(tr, sems, [p.layout for p in pairs], pol, fam)
    groups = _groups(scores, pol, fam)
    for lo, hi in ((2.5, 6), (6, 15), (15, 60)):
        groups[f"dose {lo:g}-{hi:g} normal"] = scores[(dose >= lo) & (dose < hi) & (pol > 0)]
    return _rows("independent simulator", groups)


def drift_quality(tr: Any, reference: str | None, n: int) -> dict[str, Any] | None:
    """Flagged share of a normal and of a reversed stream on a layer configured bright: the
    grey-level features against the model's reference, or the layer's CUSUM of the images'
    evidence (`polarity_layer`, as the server keeps it per layer), from the first image."""
    from semlayout.monitoring.drift import detectors_from_reference

    if not reference or not Path(reference).exists() or len(tr.polarities) < 2:
        print("drift: needs the model's reference shards and a model of both polarities (skipped)")
        return None
    out: dict[str, Any] = {"expected_polarity": 1}
    print(f"{'drift, layer bright':<26} {'n':>4} {'flagged':>8} {'by polarity':>12} "
          f"{'by features':>12} {'(ckpt head)':>12}")  # fmt: skip
    det = detectors_from_reference(reference, layer_polarity=1)["sem2layout"]
    for name, rf, seed in (("normal stream", 0.0, 4242), ("reversed stream", 1.0, 4343)):
        sems, _, _, _ = fresh_synth(n, seed, reverse_fraction=rf)
        e = polarity_streams.read_all(tr, sems, _HEADS, translate=False)["e"]
        by_pol = polarity_streams.stream_flags(e["refit"])
        before = polarity_streams.stream_flags(e["checkpoint"])
        by_feat = np.array([det.check(s).drifted for s in sems])
        flagged = by_pol | by_feat
        out[name] = {
            "n": n,
            "flagged": float(flagged.mean()),
            "by_polarity": float(by_pol.mean()),
            "by_features": float(by_feat.mean()),
            "by_polarity_checkpoint_head": float(before.mean()),
        }
        print(f"  {name:<24} {n:>4} {flagged.mean():8.1%} {by_pol.mean():12.1%} "
              f"{by_feat.mean():12.1%} {before.mean():12.1%}")  # fmt: skip
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
            for how in ("pooled", "auto"):
                print(
                    f"  {src}: {how} {a[how]:.3f} vs given {a['given']:.3f} "
                    f"(gap {a[how] - a['given']:+.3f}; bar |gap| <= 0.02)"
                )
        if norm and rev and norm.get("given") and rev.get("given") is not None:
            print(
                f"  {src}: reversed / normal, given {rev['given'] / norm['given']:.2f}, pooled "
                f"{rev['pooled'] / norm['pooled']:.2f}, auto {rev['auto'] / norm['auto']:.2f} "
                "(bar >= 0.90)"
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
    _HEADS["checkpoint"] = tr.config.polarity.auto_head
    if len(tr.polarities) == 2:  # the head training now fits, refitted for this checkpoint
        from semlayout.train.polarity_head import synth_head

        _HEADS["refit"] = synth_head(tr)
        print(f"polarity head refitted on {_HEADS['refit'].n} fresh synthetic SEMs (half dark)")
    else:
        _HEADS["refit"] = _HEADS["checkpoint"]
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
