"""The comparison page: two versions side by side on the same pairs, one self-contained HTML
file (the evaluation report's styles and image encoding; images inlined as PNG data URIs).

Sections: a warning when the versions were trained on different data, the two versions
(aliases, status, data, gate verdicts with their reasons), B judged against A on the
compared pairs, a table per evaluation set (each version's test split, their union) with
deltas marked better / worse beyond noise, the per-family deltas, and image rows: input,
A, B, target and where A and B differ.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semlayout.atomic import atomic_write_text
from semlayout.evaluation_report import REPORT_CSS, fmt, png_data_uri

_MORE_CSS = """
.warn{background:#fff3cd;border:1px solid #e0b000;padding:10px 14px;font-weight:600}
.ok{background:#e8f5e9;border:1px solid #7cb342;padding:10px 14px}
.better{color:#0a7d00;font-weight:bold}.worse{color:#c00;font-weight:bold}.noise{color:#777}
"""
_LABELS = {
    "ssim": "SSIM",
    "iou": "IoU",
    "l1": "L1",
    "epe_px": "edge placement error (px)",
    "ssim_vs_clean": "SSIM vs noise-free",
    "psnr": "PSNR (dB)",
}
_MARKS = {"better": "&#9650; better", "worse": "&#9660; worse", "within noise": "= within noise"}


def _verdict(row: Mapping[str, Any]) -> str:
    v = row.get("verdict", "n/a")
    css = {"better": "better", "worse": "worse"}.get(v, "noise")
    return f'<span class="{css}">{_MARKS.get(v, html.escape(v))}</span>'


def _delta(row: Mapping[str, Any]) -> str:
    d, noise = row.get("delta"), row.get("noise")
    if d is None:
        return "-"
    band = f" &plusmn; {noise:.4f}" if noise is not None else ""
    return f"{d:+.4f}{band}"


def _version_block(info: Mapping[str, Any], label: str) -> str:
    lin = info.get("lineage") or {}
    gate = info.get("gate") or {}
    verdict: dict[Any, str] = {
        True: '<span class="pass">passed</span>',
        False: '<span class="fail">failed</span>',
    }
    reasons = "".join(f"<li>{html.escape(str(r))}</li>" for r in gate.get("reasons", []))
    aliases = ", ".join(info.get("aliases") or []) or "-"
    return (
        f"<h3>{label}: version {info['version']} ({html.escape(aliases)})</h3>"
        f'<p class="note">registered {fmt(info.get("registered_at"))} &middot; data '
        f"{fmt(lin.get('data_uri'))} (sha256 {fmt((lin.get('data_sha256') or '')[:12])}) "
        f"&middot; config {fmt(lin.get('config'))} &middot; code "
        f"{fmt((lin.get('git_commit') or '')[:10])}"
        f" &middot; run {fmt(info.get('run_id'))}</p>"
        f"<p>Gate at registration: {verdict.get(info.get('gate_passed'), 'unknown')}</p>"
        f"<ul>{reasons}</ul>"
    )


def _set_table(result: Mapping[str, Any], va: int, vb: int) -> str:
    head = (
        f'<tr><th class="l">metric</th><th>v{va}</th><th>v{vb}</th>'
        f"<th>v{vb} &minus; v{va} (&plusmn; noise)</th><th>verdict</th></tr>"
    )
    rows = []
    for direction, title in (
        ("sem2layout", "SEM &rarr; Layout"),
        ("layout2sem", "Layout &rarr; SEM"),
    ):
        for key, row in (result.get(direction) or {}).items():
            rows.append(
                f'<tr><td class="l">{title} {_LABELS.get(key, html.escape(key))}</td>'
                f"<td>{fmt(row.get('a'))}</td><td>{fmt(row.get('b'))}</td>"
                f"<td>{_delta(row)}</td><td>{_verdict(row)}</td></tr>"
            )
    fams = result.get("families") or {}
    fam_keys = sorted({k for row in fams.values() for k in row if k != "n"})
    fam_head = "".join(f"<th>{html.escape(k)}: v{vb} &minus; v{va}</th>" for k in fam_keys)
    fam_rows = "".join(
        f'<tr><td class="l">{html.escape(f)}</td><td>{row.get("n")}</td>'
        + "".join(
            f"<td>{_delta(row[k])} {_verdict(row[k])}</td>" if k in row else "<td>-</td>"
            for k in fam_keys
        )
        + "</tr>"
        for f, row in fams.items()
    )
    return (
        f"<h2>{html.escape(str(result['label']))}: {result['n']} pairs</h2>"
        f"<table>{head}{''.join(rows)}</table>"
        f'<table><tr><th class="l">family</th><th>n</th>{fam_head}</tr>{fam_rows}</table>'
    )


def difference_image(a: np.ndarray, b: np.ndarray, binary: bool) -> np.ndarray:
    """RGB (H, W, 3) of where A and B disagree: for layouts, grey = agree, orange = only A
    draws pattern, cyan = only B; for SEMs, |A - B| as a heat map."""
    from semlayout.evaluation_report import abs_diff_heatmap

    if not binary:
        return abs_diff_heatmap(a, b)
    pa, pb = np.asarray(a) > 127, np.asarray(b) > 127
    out = np.where(pa[..., None], 200, 40).astype(np.uint8).repeat(3, axis=2)
    out[pa & ~pb] = (240, 140, 20)
    out[pb & ~pa] = (20, 190, 220)
    return out


def _samples(samples: Sequence[Mapping[str, Any]], va: int, vb: int) -> str:
    if not samples:
        return ""
    out = [
        "<h2>The same pairs, side by side</h2>"
        '<p class="note">difference of drawn layouts: grey = both agree, '
        f'<b style="color:#f08c14">orange</b> = only v{va} draws pattern, '
        f'<b style="color:#14bedc">cyan</b> = only v{vb}; for SEMs |v{va} &minus; v{vb}| '
        "(black = equal).</p>"
        '<table class="grid"><tr><th class="l">pair</th><th>input</th>'
        f"<th>v{va}</th><th>v{vb}</th><th>target</th><th>v{va} vs v{vb}</th></tr>"
    ]
    for s in samples:
        diff = difference_image(s["a"], s["b"], binary=s["direction"] == "sem2layout")
        cells = "".join(
            f'<td><img alt="{kind} {html.escape(s["id"])}" src="{png_data_uri(img)}"></td>'
            for kind, img in (
                ("input", s["input"]),
                (f"v{va}", s["a"]),
                (f"v{vb}", s["b"]),
                ("target", s["target"]),
                ("difference", diff),
            )
        )
        label = (
            f'{html.escape(s["id"])}<br>{html.escape(s["family"])}<br>{s["direction"]}'
            f"<br>SSIM {fmt(s.get('a_ssim'))} / {fmt(s.get('b_ssim'))}"
        )
        out.append(f'<tr><td class="l">{label}</td>{cells}</tr>')
    out.append("</table>")
    return "".join(out)


def render_comparison_html(result: Mapping[str, Any]) -> str:
    a, b = result["a"], result["b"]
    va, vb = a["version"], b["version"]
    title = f"semlayout: {result['name']} v{va} vs v{vb}"
    banner_css = "ok" if result.get("same_data") else "warn"
    judged = result.get("b_judged_against_a") or {}
    passed = (
        '<span class="pass">PASS</span>'
        if judged.get("passed")
        else ('<span class="fail">FAIL</span>')
    )
    body = [
        f'<p class="{banner_css}" id="data-note">{html.escape(result["data_note"])}</p>',
        "<h2>The versions</h2>",
        _version_block(a, "A"),
        _version_block(b, "B"),
        f"<h2>Gate: v{vb} judged against v{va} on the {html.escape(str(judged.get('on')))} "
        f"pairs: {passed}</h2>",
        "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in judged.get("reasons", [])) + "</ul>",
        f'<p class="note">{html.escape(result.get("noise_rule", ""))}.</p>',
        *(_set_table(r, va, vb) for r in result["sets"]),
        _samples(result.get("samples") or [], va, vb),
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{REPORT_CSS}{_MORE_CSS}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>" + "".join(body) + "</body></html>\n"
    )


def write_comparison_html(dest: str | os.PathLike[str], result: Mapping[str, Any]) -> Path:
    """Write the page atomically to `dest` and return its path."""
    dest = Path(dest)
    atomic_write_text(dest, render_comparison_html(result))
    return dest


def json_ready(result: Mapping[str, Any]) -> dict[str, Any]:
    """The comparison without its images (what `registry compare --json` prints)."""
    return {k: v for k, v in result.items() if k != "samples"}
