"""The evaluation report: one self-contained HTML file (inline CSS, PNG data URIs, SVG curves).

Sections: gate verdict (when given), per-direction metric tables with the
baselines beside the model and, for Layout->SEM, the noise ceiling (SSIM of the
noise-free rendering against the noisy SEM: the best any model can score),
per-family breakdown, a sample grid (input / prediction / target / error) and
training curves from `history.json`.

Samples are dicts as returned by `semlayout.evaluation.evaluate_model(...,
return_samples=True)`: {"direction", "id", "family", "input", "prediction",
"target"} with uint8 (H, W) images. Error overlays: for layouts, red = pattern
missing from the prediction, blue = extra pattern; for SEM, an abs-difference heatmap.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semlayout.atomic import atomic_write_text
from semlayout.directions import DIRECTIONS

REPORT_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;\
color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}\
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.pass{color:#0a0;font-weight:bold}.fail{color:#c00;font-weight:bold}
.note{color:#555;font-size:.9em}\
.grid img{width:160px;height:160px;image-rendering:pixelated;border:1px solid #ccc}
.grid td{text-align:center;font-size:.8em}.legend span{display:inline-block;margin-right:12px}
"""

# Metric keys shown per direction, in this order, with their display names.
_LABELS = {
    "ssim": "SSIM",
    "l1": "L1",
    "psnr": "PSNR (dB)",
    "iou": "IoU",
    "epe_px": "edge placement error (px)",
    "cd_error_px": "CD error (px)",
    "ssim_vs_clean": "SSIM vs clean",
    "ceiling_ssim": "SSIM ceiling",
    "l1_vs_clean": "L1 vs clean",
    "psnr_vs_clean": "PSNR vs clean (dB)",
}
_SERIES_COLOURS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
)


def fmt(value: Any) -> str:
    """Format a metric for the report (4 decimals; '-' for missing)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.4f}"
    return html.escape(str(value))


def png_data_uri(img: np.ndarray) -> str:
    """(H, W) uint8 or (H, W, 3) RGB uint8 -> `data:image/png;base64,...`."""
    import cv2

    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def layout_error_overlay(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3): agreement in gray levels, red = missing pattern, blue = extra pattern."""
    p, t = np.asarray(pred) > 127, np.asarray(target) > 127
    out = np.where(t[..., None], 200, 40).astype(np.uint8).repeat(3, axis=2)
    out[t & ~p] = (230, 30, 30)
    out[p & ~t] = (40, 90, 240)
    return out


def abs_diff_heatmap(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3): |pred - target| through the inferno colour map (black = equal)."""
    import cv2

    diff = cv2.absdiff(np.asarray(pred, np.uint8), np.asarray(target, np.uint8))
    return cv2.cvtColor(cv2.applyColorMap(diff, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------- sections
def _gate_section(gate: Any) -> str:
    if gate is None:
        return ""
    if hasattr(gate, "model_dump"):
        gate = gate.model_dump()
    passed = bool(gate.get("passed"))
    reasons = gate.get("reasons") or []
    verdict = '<span class="pass">PASSED</span>' if passed else '<span class="fail">FAILED</span>'
    items = "".join(f"<li>{html.escape(str(r))}</li>" for r in reasons)
    return f"<h2>Promotion gate</h2><p>Gate: {verdict}</p><ul>{items}</ul>"


def _row(name: str, *cells: Any) -> str:
    return (
        f'<tr><td class="l">{html.escape(name)}</td>'
        + "".join(f"<td>{fmt(c)}</td>" for c in cells)
        + "</tr>"
    )


def _sem2layout_section(m: Mapping[str, Any]) -> str:
    base = m.get("baseline_otsu") or {}
    rows = [
        _row(_LABELS[k], m.get(k), base.get(k))
        for k in ("ssim", "l1", "psnr", "iou", "epe_px", "cd_error_px")
        if k in m
    ]
    return (
        "<h2>SEM &rarr; Layout</h2>"
        '<table><tr><th class="l">metric</th><th>model</th>'
        "<th>baseline: Otsu of blurred SEM</th></tr>" + "".join(rows) + "</table>"
        '<p class="note">Otsu baseline: Gaussian blur, Otsu threshold, one polarity for all '
        f'images ({fmt(base.get("polarity", "bright"))} = pattern), fitted on the train split, '
        "never on the test targets. EPE/CD in pixels at 250x250; CD on line/space only.</p>"
        + _family_table(m, ("ssim", "iou", "l1", "epe_px", "cd_error_px"), base)
    )


def _layout2sem_section(m: Mapping[str, Any]) -> str:
    ceil = m.get("ceiling") or {}
    rows = [
        _row("SSIM", m.get("ssim"), ceil.get("ssim")),
        _row("L1", m.get("l1"), ceil.get("l1")),
        _row("PSNR (dB)", m.get("psnr"), ceil.get("psnr")),
    ]
    clean_rows = [
        _row(_LABELS[k], m.get(k), None)
        for k in ("ssim_vs_clean", "l1_vs_clean", "psnr_vs_clean")
        if k in m
    ]
    ceiling_note = ""
    if ceil.get("ssim") is not None and m.get("ssim") is not None:
        ceiling_note = (
            f'<p class="note">SSIM {fmt(m.get("ssim"))} against the noisy SEM, '
            f'ceiling {fmt(ceil.get("ssim"))}: '
            "shot noise cannot be predicted, so SSIM(noise-free rendering, noisy SEM) is the best "
            "any model can reach; the score vs the clean rendering shows how much of the "
            "predictable image the model gets.</p>"
        )
    return (
        "<h2>Layout &rarr; SEM</h2>"
        '<table><tr><th class="l">metric</th><th>model vs noisy SEM</th>'
        "<th>ceiling: clean vs noisy SEM</th></tr>"
        + "".join(rows + clean_rows)
        + "</table>"
        + ceiling_note
        + _family_table(m, ("ssim", "ceiling_ssim", "ssim_vs_clean", "l1", "psnr"), None)
    )


def _family_table(m: Mapping[str, Any], keys: Sequence[str], base: Mapping[str, Any] | None) -> str:
    fams = m.get("per_family") or {}
    if not fams:
        return ""
    keys = [k for k in keys if any(k in row for row in fams.values())]
    bfams = (base or {}).get("per_family") or {}
    show_base = [k for k in keys if any(k in row for row in bfams.values())]
    head = "".join(f"<th>{_LABELS.get(k, k)}</th>" for k in keys) + "".join(
        f"<th>Otsu {_LABELS.get(k, k)}</th>" for k in show_base
    )
    body = ""
    for fam, row in sorted(fams.items()):
        brow = bfams.get(fam, {})
        body += (
            f'<tr><td class="l">{html.escape(fam)}</td><td>{fmt(row.get("n"))}</td>'
            + "".join(f"<td>{fmt(row.get(k))}</td>" for k in keys)
            + "".join(f"<td>{fmt(brow.get(k))}</td>" for k in show_base)
            + "</tr>"
        )
    return f'<table><tr><th class="l">family</th><th>n</th>{head}</tr>{body}</table>'


def _samples_section(samples: Sequence[Mapping[str, Any]]) -> str:
    if not samples:
        return ""
    out = [
        '<h2>Samples</h2><p class="legend note"><span>layout error: '
        '<b style="color:#e61e1e">red</b> = missing pattern, '
        '<b style="color:#285af0">blue</b> = extra '
        "pattern, gray = agreement</span><span>SEM error: |prediction - target| heatmap</span></p>"
    ]
    for direction in DIRECTIONS:
        rows = [s for s in samples if s.get("direction") == direction]
        if not rows:
            continue
        title = "SEM &rarr; Layout" if direction == "sem2layout" else "Layout &rarr; SEM"
        out.append(
            f'<h3>{title}</h3><table class="grid"><tr><th class="l">pair</th><th>input</th>'
            "<th>prediction</th><th>target</th><th>error</th></tr>"
        )
        for s in rows:
            # sem2layout: the error of the drawn layout the IoU was scored on (`layout`), when given
            err = (layout_error_overlay if direction == "sem2layout" else abs_diff_heatmap)(
                s.get("layout", s["prediction"]), s["target"]
            )
            cells = "".join(
                f'<td><img alt="{html.escape(kind)} {html.escape(str(s.get("id", "")))}" '
                f'src="{png_data_uri(img)}"></td>'
                for kind, img in (
                    ("input", s["input"]),
                    ("prediction", s["prediction"]),
                    ("target", s["target"]),
                    ("error", err),
                )
            )
            label = (
                f'{html.escape(str(s.get("id", "")))}<br>{html.escape(str(s.get("family", "")))}'
            )
            scores = "".join(
                f"<br>{_LABELS.get(k, k)} {fmt(s[k])}" for k in ("ssim", "iou") if k in s
            )
            out.append(f'<tr><td class="l">{label}{scores}</td>{cells}</tr>')
        out.append("</table>")
    return "".join(out)


def curves_from_history(history: Any) -> dict[str, list[float]]:
    """Normalise training history to {series: [value per epoch]}.

    Accepts {"epochs": [{"epoch": 1, "loss_G": ...}, ...]}, a list of such per-epoch
    dicts, or {series: [values]} directly. Non-numeric fields are dropped.
    """
    if isinstance(history, Mapping) and "epochs" in history and isinstance(history["epochs"], list):
        history = history["epochs"]
    series: dict[str, list[float]] = {}
    if isinstance(history, list):
        for rec in history:
            if not isinstance(rec, Mapping):
                continue
            for k, v in rec.items():
                if k in ("epoch", "step") or isinstance(v, bool) or not isinstance(v, int | float):
                    continue
                series.setdefault(k, []).append(float(v))
    elif isinstance(history, Mapping):
        for k, v in history.items():
            if isinstance(v, list) and v and all(isinstance(x, int | float) for x in v):
                series[k] = [float(x) for x in v]
    return series


def curves_svg(curves: Mapping[str, Sequence[float]], width: int = 640, height: int = 260) -> str:
    """An inline SVG line chart, one polyline per series, y from 0 (or the min) to the max."""
    finite = {k: [v for v in vals if math.isfinite(v)] for k, vals in curves.items()}
    finite = {k: v for k, v in finite.items() if v}
    if not finite:
        return ""
    pad_l, pad_r, pad_t, pad_b = 56, 160, 10, 28
    lo = min(0.0, min(min(v) for v in finite.values()))
    hi = max(max(v) for v in finite.values())
    hi = hi if hi > lo else lo + 1.0
    n_max = max(len(v) for v in curves.values())
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b

    def xy(i: int, v: float) -> str:
        x = pad_l + (pw * i / max(n_max - 1, 1))
        y = pad_t + ph * (1 - (v - lo) / (hi - lo))
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
        f'<rect x="{pad_l}" y="{pad_t}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
        f'<text x="{pad_l - 4}" y="{pad_t + 10}" font-size="10" text-anchor="end">{hi:.3g}</text>',
        f'<text x="{pad_l - 4}" y="{pad_t + ph}" font-size="10" text-anchor="end">{lo:.3g}</text>',
        f'<text x="{pad_l + pw / 2}" y="{height - 6}" font-size="11" text-anchor="middle">epoch '
        f"(1..{n_max})</text>",
    ]
    for j, (name, vals) in enumerate(curves.items()):
        colour = _SERIES_COLOURS[j % len(_SERIES_COLOURS)]
        pts = " ".join(xy(i, v) for i, v in enumerate(vals) if math.isfinite(v))
        if not pts:
            continue
        if len(vals) == 1:
            parts.append(
                f'<circle cx="{pts.split(",")[0]}" cy="{pts.split(",")[1]}" r="3" fill="{colour}"/>'
            )
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/>')
        ly = pad_t + 12 + 14 * j
        parts.append(
            f'<line x1="{width - pad_r + 8}" y1="{ly - 4}" x2="{width - pad_r + 24}" y2="{ly - 4}" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
        parts.append(
            f'<text x="{width - pad_r + 28}" y="{ly}" font-size="11">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _curves_section(curves: Any) -> str:
    if curves is None:
        return ""
    if isinstance(curves, str | os.PathLike):
        curves = json.loads(Path(curves).read_text())
    series = curves_from_history(curves)
    if not series:
        return ""
    charts = "".join(
        f"<h3>{html.escape(title)}</h3><div>{curves_svg(group)}</div>"
        for title, group in group_curves(series).items()
    )
    return f"<h2>Training curves</h2>{charts}"


_NOT_CURVES = ("seconds", "time", "wall")


def group_curves(series: Mapping[str, list[float]]) -> dict[str, dict[str, list[float]]]:
    """Split series into charts: losses (D, then G terms), validation metrics, learning rate.

    Losses of very different scale (L1 x100 vs GAN ~1) get separate charts. Timing fields are
    dropped.
    """
    groups: dict[str, dict[str, list[float]]] = {}
    for name, vals in series.items():
        low = name.lower()
        if any(t in low for t in _NOT_CURVES):
            continue
        if low.startswith("val"):
            title = "validation"
        elif low in ("lr", "learning_rate") or low.startswith("lr_"):
            title = "learning rate"
        else:
            peak = max((abs(v) for v in vals if math.isfinite(v)), default=0.0)
            title = "losses (large terms)" if peak > 10 else "losses"
        groups.setdefault(title, {})[name] = vals
    order = ("losses", "losses (large terms)", "validation", "learning rate")
    return {t: groups[t] for t in order if t in groups}


# ---------------------------------------------------------------- entry point
def render_report_html(
    metrics: Mapping[str, Any],
    samples: Sequence[Mapping[str, Any]] = (),
    curves: Any = None,
    gate: Any = None,
    title: str = "semlayout evaluation report",
    confidence: Mapping[str, Any] | None = None,
) -> str:
    """The report as an HTML string (see module docstring); `confidence`: the calibration
    judged on the test split (`semlayout.confidence_fit.judge_split`)."""
    from semlayout.confidence_report import confidence_section

    head = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        f"<style>{REPORT_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
    )
    info = []
    for k in ("model", "split", "n", "backend", "image_size"):
        if k in metrics:
            info.append(f"{html.escape(k)}: <b>{fmt(metrics[k])}</b>")
    body = [f'<p class="note">{" &middot; ".join(info)}</p>' if info else "", _gate_section(gate)]
    if isinstance(metrics.get("sem2layout"), Mapping):
        body.append(_sem2layout_section(metrics["sem2layout"]))
    if isinstance(metrics.get("layout2sem"), Mapping):
        body.append(_layout2sem_section(metrics["layout2sem"]))
    body.append(confidence_section(confidence))
    body.append(_samples_section(samples))
    body.append(_curves_section(curves))
    return head + "".join(body) + "</body></html>\n"


def write_report_html(
    dest: str | os.PathLike[str],
    metrics: Mapping[str, Any],
    samples: Sequence[Mapping[str, Any]] = (),
    curves: Any = None,
    gate: Any = None,
    title: str = "semlayout evaluation report",
    confidence: Mapping[str, Any] | None = None,
) -> Path:
    """Write the self-contained report atomically to `dest` and return its path.

    `curves`: a parsed `history.json`, a path to one, or {series: [values]}.
    `gate`: a `semlayout.gate.GateResult` or a dict with "passed" and "reasons".
    `confidence`: see `render_report_html`.
    """
    dest = Path(dest)
    page = render_report_html(metrics, samples, curves, gate, title, confidence)
    atomic_write_text(dest, page)
    return dest
