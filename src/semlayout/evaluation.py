"""Evaluate a model on a shard split, both directions, per family, with baselines.

`evaluate_model(model, shards_dir, split="test")` returns (docs/architecture.md):
```
{"n", "split", "model", "backend", "image_size", "seconds",
 "sem2layout": {"l1","ssim","psnr","iou","iou_threshold","epe_px","cd_error_px",
                "per_family": {fam: {..., "n"}},
                "baseline_otsu": {"l1","ssim","psnr","iou","epe_px","cd_error_px", "per_family"}},
 "layout2sem": {"l1","ssim","psnr","iou", "ssim_vs_clean","l1_vs_clean","psnr_vs_clean",
                "ceiling": {"ssim","psnr","l1"}, "per_family": {...}},
 "samples": [ {direction, id, family, input, prediction[, layout], target[, clean], ssim, iou},
              ... ]}
```
`samples` holds uint8 images for the HTML report: pop it before writing JSON
(`metrics_json_ready` does). Everything else is plain JSON (a metric with no
value, e.g. CD error on a split without line/space, is null, never NaN).

How each number is measured, at 250x250 (the native template size; the
Translator resizes to the model size and back):
- SEM->Layout: L1/SSIM/PSNR on the model's continuous output (uint8) against the
  binary template; IoU, edge placement error (px) and CD error (px, line/space
  pairs only) on the drawn layout the product returns (`Translator.to_layout`:
  threshold at mid-range, then the checkpoint's Manhattan fit); `iou_threshold` is
  the IoU of the thresholded output without the fit.
- Polarity (`semlayout.evaluation_polarity`): every pair is translated in its recorded
  contrast polarity (both directions); `per_polarity` splits the scores by it, and for a
  model that serves both polarities `sem2layout.auto` scores the same SEMs with
  `polarity=auto` (IoU, the given-polarity IoU beside it, how often auto was right).
- Layout->SEM: L1/SSIM/PSNR against the noisy SEM; IoU between the two images
  each binarised by its own Otsu threshold (structure agreement, polarity as is).
  When the shards carry noise-free renderings: the same scores against the clean
  image (`*_vs_clean`) and the `ceiling` = clean vs noisy, the best any model can
  score against a noisy measurement.
- Baseline for SEM->Layout (`baseline_otsu`): Gaussian blur (sigma 2 px), Otsu
  threshold, and ONE polarity for every image ("bright" = pixels above the
  threshold are pattern, or "dark"), chosen on the TRAIN split (the one with the
  higher mean IoU there) and recorded as `baseline_otsu.polarity`. It never looks
  at a test target: a baseline that picks each image's polarity from the answer
  would flatter itself. (Taking the minority class as the pattern was tried and
  rejected: SEM edge bloom makes the bright class the majority for line/space at
  duty ~0.4-0.7, so that rule inverted most line/space images — IoU 0.08 — and
  made a strawman.) Images with reversed material contrast defeat a fixed
  polarity; that is a real weakness of thresholding, and the model has to learn it.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from semlayout import metrics as M
from semlayout.errors import SemlayoutError
from semlayout.evaluation_polarity import auto_block, per_polarity, translate_in, used_polarities
from semlayout.polarity import polarity_counts

LINE_SPACE_FAMILY = "line_space"
OTSU_BLUR_SIGMA = 2.0


# ---------------------------------------------------------------- baselines
POLARITIES = ("bright", "dark")


def otsu_layout_baseline(sem: np.ndarray, polarity: str = "bright") -> np.ndarray:
    """SEM (H, W) uint8 -> binary layout guess {0, 255}: blur, Otsu, `polarity` side = pattern."""
    import cv2

    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
    blurred = cv2.GaussianBlur(sem, (0, 0), OTSU_BLUR_SIGMA)
    _, mask = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return (mask if polarity == "bright" else 255 - mask).astype(np.uint8)


def fit_otsu_polarity(shards_dir: str | os.PathLike[str], max_pairs: int = 256) -> str:
    """The baseline's one polarity, fitted on (at most `max_pairs` of) the TRAIN split only.

    "bright" when the train split is empty or missing.
    """
    from semlayout.data.shards import iter_split

    ious: dict[str, list[float]] = {p: [] for p in POLARITIES}
    try:
        for i, rec in enumerate(iter_split(shards_dir, "train")):
            if i >= max_pairs:
                break
            bright = otsu_layout_baseline(rec["sem"], "bright")
            ious["bright"].append(M.iou(bright, rec["layout"]))
            ious["dark"].append(M.iou(255 - bright, rec["layout"]))
    except SemlayoutError:
        return "bright"
    if not ious["bright"]:
        return "bright"
    return "dark" if np.mean(ious["dark"]) > np.mean(ious["bright"]) else "bright"


def otsu_binarize(img: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> {0, 255} by its own Otsu threshold after a light blur (polarity kept)."""
    import cv2

    blurred = cv2.GaussianBlur(img, (0, 0), 1.0)
    _, mask = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return mask.astype(np.uint8)


# ---------------------------------------------------------------- per-image scores
def _layout_scores(
    pred: np.ndarray,
    target: np.ndarray,
    families: np.ndarray,
    drawn: np.ndarray | None = None,
    threshold: float = 0.5,
) -> dict[str, list[float]]:
    """Per-image SEM->Layout metrics for (N, H, W) uint8 stacks. `drawn` is the binary layout
    the product returns for `pred` (threshold + fit): IoU, EPE and CD are scored on it, and
    `iou_threshold` keeps the IoU of `pred` thresholded alone (at the fit's `threshold`)."""
    binary = pred if drawn is None else drawn
    out: dict[str, list[float]] = {
        "l1": M.l1_batch(pred, target).tolist(),
        "ssim": M.ssim_batch(pred, target).tolist(),
        "psnr": M.psnr_batch(pred, target).tolist(),
        "iou": M.iou_batch(binary, target).tolist(),
        "epe_px": [M.edge_placement_error(p, t) for p, t in zip(binary, target, strict=True)],
        "cd_error_px": [
            M.cd_error(p, t) if fam == LINE_SPACE_FAMILY else math.nan
            for p, t, fam in zip(binary, target, families, strict=True)
        ],
    }
    if drawn is not None:
        out["iou_threshold"] = M.iou_batch(pred, target, threshold).tolist()
    return out


def _sem_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, list[float]]:
    """Per-image Layout->SEM metrics for (N, H, W) uint8 stacks."""
    pb = np.stack([otsu_binarize(p) for p in pred])
    tb = np.stack([otsu_binarize(t) for t in target])
    return {
        "l1": M.l1_batch(pred, target).tolist(),
        "ssim": M.ssim_batch(pred, target).tolist(),
        "ssim_lowpass": M.ssim_lowpass_batch(pred, target).tolist(),
        "psnr": M.psnr_batch(pred, target).tolist(),
        "iou": M.iou_batch(pb, tb).tolist(),
    }


def _mean(values: Any) -> float | None:
    vals = [float(v) for v in values if math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


# ---------------------------------------------------------------- selection
def select_indices(families: np.ndarray, max_samples: int | None) -> np.ndarray:
    """All indices, or `max_samples` of them taken round-robin over families
    (every family shows up)."""
    n = len(families)
    if max_samples is None or max_samples >= n:
        return np.arange(n)
    if max_samples < 1:
        raise SemlayoutError(f"max_samples must be >= 1, got {max_samples}")
    queues = {f: list(np.flatnonzero(families == f)) for f in sorted(set(families.tolist()))}
    picked: list[int] = []
    while len(picked) < max_samples:
        for f in list(queues):
            if queues[f] and len(picked) < max_samples:
                picked.append(int(queues[f].pop(0)))
    return np.array(sorted(picked))


def _sample_indices(families: np.ndarray, k: int) -> list[int]:
    """Up to k pair indices for the report, one per family first."""
    if k <= 0:
        return []
    return select_indices(families, min(k, len(families))).tolist()


# ---------------------------------------------------------------- evaluation
def evaluate_model(
    model: Any,
    shards_dir: str | os.PathLike[str],
    split: str = "test",
    backend: str = "eager",
    max_samples: int | None = None,
    tracking_uri: str | None = None,
    n_report_samples: int = 4,
    batch_size: int = 16,
    per_pair: bool = False,
) -> dict[str, Any]:
    """Score both directions of `model` (checkpoint folder, `models:/...` URI or a loaded
    `Translator`) on a shard split, with baselines; see the module docstring.

    `per_pair`: also return every pair's scores, `"per_pair": {"ids", "families",
    "sem2layout": {metric: [value per pair]}, "layout2sem": {...}}` (NaN where a metric does
    not apply), for paired comparisons of two models on the same pairs."""
    from semlayout.data.shards import load_split_arrays
    from semlayout.inference import Translator

    t0 = time.perf_counter()
    tr = (
        model
        if isinstance(model, Translator)
        else Translator.load(model, backend=backend, tracking_uri=tracking_uri)
    )
    data = load_split_arrays(shards_dir, split)
    idx = select_indices(data["families"], max_samples)
    ids, families = data["ids"][idx], data["families"][idx]
    sem, layout = data["sem"][idx], data["layout"][idx]
    clean = data["clean"][idx] if "clean" in data else None
    pol = data["polarity"][idx]

    pred_layout, drawn, s2l_scores, s2l = _score_sem2layout(
        tr, sem, layout, families, pol, shards_dir, batch_size
    )
    pred_sem, l2s_scores, l2s = _score_layout2sem(tr, sem, layout, clean, families, pol, batch_size)
    picked = _sample_indices(families, n_report_samples)
    samples = _report_samples(
        picked, ids, families, sem, layout, clean, (pred_layout, drawn, s2l_scores),
        (pred_sem, l2s_scores),
    )  # fmt: skip

    result: dict[str, Any] = {
        "n": len(idx),
        "split": split,
        "model": str(getattr(tr, "source", model)),
        "backend": getattr(tr, "backend", backend),
        "image_size": int(sem.shape[-1]),
        "model_image_size": int(tr.image_size),
        "shards": str(shards_dir),
        "has_clean": clean is not None,
        "polarity": polarity_counts(pol.tolist()),
        "model_polarities": list(tr.polarities),
        "seconds": round(time.perf_counter() - t0, 3),
        "sem2layout": s2l,
        "layout2sem": l2s,
        "samples": samples,
    }
    if per_pair:
        result["per_pair"] = {
            "ids": [str(i) for i in ids],
            "families": [str(f) for f in families],
            "sem2layout": s2l_scores,
            "layout2sem": l2s_scores,
        }
    return result


def _score_sem2layout(
    tr: Any,
    sem: np.ndarray,
    layout: np.ndarray,
    families: np.ndarray,
    pol: np.ndarray,
    shards_dir: str | os.PathLike[str],
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, dict[str, list[float]], dict[str, Any]]:
    """SEM -> Layout, and the Otsu baseline on the same pairs:
    (raw predictions, drawn layouts, per-pair scores, aggregated block)."""
    fam_list = [str(f) for f in families]
    pred_layout = translate_in(tr, "sem2layout", list(sem), pol.tolist(), batch_size)
    drawn = np.stack([tr.to_layout(p) for p in pred_layout])
    scores = _layout_scores(pred_layout, layout, families, drawn, tr.config.layout_fit.threshold)
    block = M.aggregate(scores, fam_list)
    block["per_polarity"] = per_polarity(scores, pol.tolist(), ("iou", "ssim", "l1"))
    block["unserved"] = int((used_polarities(tr, pol.tolist()) != pol).sum())
    if len(tr.polarities) > 1:
        block["auto"] = auto_block(tr, sem, layout, pol.tolist(), scores["iou"], batch_size)
    polarity = fit_otsu_polarity(shards_dir)
    base_layout = np.stack([otsu_layout_baseline(s, polarity) for s in sem])
    block["baseline_otsu"] = M.aggregate(_layout_scores(base_layout, layout, families), fam_list)
    block["baseline_otsu"]["polarity"] = polarity
    return pred_layout, drawn, scores, block


def _score_layout2sem(
    tr: Any,
    sem: np.ndarray,
    layout: np.ndarray,
    clean: np.ndarray | None,
    families: np.ndarray,
    pol: np.ndarray,
    batch_size: int,
) -> tuple[np.ndarray, dict[str, list[float]], dict[str, Any]]:
    """Layout -> SEM against the noisy SEM and (when present) the clean rendering, with the
    ceiling SSIM(clean, noisy): (predictions, per-pair scores, aggregated block)."""
    pred_sem = translate_in(tr, "layout2sem", list(layout), pol.tolist(), batch_size)
    scores = _sem_scores(pred_sem, sem)
    if clean is not None:
        scores["ssim_vs_clean"] = M.ssim_batch(pred_sem, clean).tolist()
        scores["l1_vs_clean"] = M.l1_batch(pred_sem, clean).tolist()
        scores["psnr_vs_clean"] = M.psnr_batch(pred_sem, clean).tolist()
    block = M.aggregate(scores, [str(f) for f in families])
    if clean is not None:
        ceil_ssim = M.ssim_batch(clean, sem)
        ceil_psnr = M.psnr_batch(clean, sem)
        ceil_l1 = M.l1_batch(clean, sem)
        block["ceiling"] = {
            "ssim": _mean(ceil_ssim),
            "psnr": _mean(ceil_psnr),
            "l1": _mean(ceil_l1),
        }
        for fam, row in block["per_family"].items():
            row["ceiling_ssim"] = _mean(ceil_ssim[families == fam])
    block["per_polarity"] = per_polarity(
        scores, pol.tolist(), [k for k in ("ssim", "l1", "ssim_vs_clean") if k in scores]
    )
    return pred_sem, scores, block


def _report_samples(
    picked: list[int],
    ids: np.ndarray,
    families: np.ndarray,
    sem: np.ndarray,
    layout: np.ndarray,
    clean: np.ndarray | None,
    s2l: tuple[np.ndarray, np.ndarray, dict[str, list[float]]],
    l2s: tuple[np.ndarray, dict[str, list[float]]],
) -> list[dict[str, Any]]:
    """The report's image rows: both directions for each picked pair."""
    (pred_layout, drawn, s2l_scores), (pred_sem, l2s_scores) = s2l, l2s
    samples: list[dict[str, Any]] = []
    for i in picked:
        common = {"id": str(ids[i]), "family": str(families[i])}
        samples.append(
            {
                **common,
                "direction": "sem2layout",
                "input": sem[i],
                "prediction": pred_layout[i],
                "layout": drawn[i],
                "target": layout[i],
                "ssim": s2l_scores["ssim"][i],
                "iou": s2l_scores["iou"][i],
            }
        )
        l2s_sample = {
            **common,
            "direction": "layout2sem",
            "input": layout[i],
            "prediction": pred_sem[i],
            "target": sem[i],
            "ssim": l2s_scores["ssim"][i],
        }
        if clean is not None:
            l2s_sample["clean"] = clean[i]
        samples.append(l2s_sample)
    return samples


def metrics_json_ready(result: dict[str, Any]) -> dict[str, Any]:
    """The evaluation dict without the sample images and per-pair scores (what goes into
    metrics.json)."""
    return {k: v for k, v in result.items() if k not in ("samples", "per_pair")}


def write_evaluation(
    result: dict[str, Any],
    out: str | os.PathLike[str],
    report: str | os.PathLike[str] | None = None,
    curves: Any = None,
    gate: Any = None,
    confidence: dict[str, Any] | None = None,
) -> None:
    """metrics.json (atomic) and optionally the HTML report; `confidence`: the calibration
    judged on the split (`confidence_fit.judge_split`), in both."""
    import json

    from semlayout.atomic import atomic_write_text
    from semlayout.evaluation_report import write_report_html

    for path in (out, report):
        if path is not None and Path(path).is_dir():
            raise SemlayoutError(f"{path} is a folder; expected a file path to write")
    # the report first: when it cannot be written, no metrics.json claims a finished evaluation
    if report is not None:
        write_report_html(
            report,
            metrics_json_ready(result),
            result.get("samples", []),
            curves=curves,
            gate=gate,
            title=f"semlayout evaluation: {result.get('model', '')}",
            confidence=confidence,
        )
    doc = metrics_json_ready(result)
    if confidence is not None:
        from semlayout.confidence_fit import json_ready

        doc["confidence"] = json_ready(confidence)
    atomic_write_text(Path(out), json.dumps(doc, indent=2, sort_keys=True) + "\n")
