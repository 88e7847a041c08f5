"""Two registered versions scored on the same pairs: the release manager's comparison.

`compare_versions(registry, name, a, b)` evaluates both versions on every evaluation set —
each version's own test split (found through its `lineage.shards_uri` tag, or given with
`data=`) and, when they differ, the union of those splits — pair by pair, so every delta is
a paired difference on identical inputs. A delta is marked better / worse only when it is
beyond noise: more than twice the standard error of the per-pair differences. The result
says when the versions were trained on different data, and carries the gate verdicts and a
fresh judgement of B against A on the compared pairs. The HTML page is
`semlayout.comparison_report`.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semlayout import metrics as M
from semlayout.directions import DIRECTIONS
from semlayout.errors import SemlayoutError

# the numbers a decision is made on, per direction: (key, higher is better)
HEADLINE: dict[str, tuple[tuple[str, bool], ...]] = {
    "sem2layout": (("ssim", True), ("iou", True), ("l1", False), ("epe_px", False)),
    "layout2sem": (("ssim", True), ("ssim_vs_clean", True), ("l1", False), ("psnr", True)),
}
NOISE_SIGMAS = 2.0  # a delta beyond 2 standard errors of the paired differences is not noise
# below these a difference is not worth a mark even when it is consistent (metric resolution)
MIN_DELTA = {"psnr": 0.01, "psnr_vs_clean": 0.01, "epe_px": 0.01, "cd_error_px": 0.01}
MIN_DELTA_DEFAULT = 0.001  # SSIM / IoU / L1 on a 0..1 scale


@dataclass
class EvalSet:
    """Pairs both versions are scored on: a shard folder's test split (or a union of them)."""

    label: str
    shards: list[Path]
    digest: str | None = None


def _short(text: str | None, n: int = 12) -> str:
    return (text or "")[:n] or "unknown"


def paired_delta(
    a: list[float], b: list[float], higher_is_better: bool, min_delta: float = MIN_DELTA_DEFAULT
) -> dict[str, Any]:
    """Mean of B - A over the pairs where both are finite, its noise band and a verdict:
    better / worse when |delta| exceeds both the noise band and `min_delta`."""
    d = np.array(
        [y - x for x, y in zip(a, b, strict=True) if math.isfinite(x) and math.isfinite(y)]
    )
    if d.size == 0:
        return {"n": 0, "a": None, "b": None, "delta": None, "noise": None, "verdict": "n/a"}
    fa = [x for x in a if math.isfinite(x)]
    fb = [y for y in b if math.isfinite(y)]
    delta = float(d.mean())
    noise = float(NOISE_SIGMAS * d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.inf
    gain = delta if higher_is_better else -delta
    verdict = "within noise"
    if d.size > 1 and abs(delta) > max(noise, min_delta):
        verdict = "better" if gain > 0 else "worse"
    return {
        "n": int(d.size),
        "a": float(np.mean(fa)) if fa else None,
        "b": float(np.mean(fb)) if fb else None,
        "delta": delta,
        "noise": noise if math.isfinite(noise) else None,
        "verdict": verdict,
    }


def _min_delta(key: str) -> float:
    return MIN_DELTA.get(key, MIN_DELTA_DEFAULT)


def score_table(per_a: dict[str, Any], per_b: dict[str, Any]) -> dict[str, Any]:
    """Headline deltas per direction, overall and per family, from two `per_pair` blocks
    scored on the same pairs in the same order."""
    if per_a["ids"] != per_b["ids"]:
        raise SemlayoutError("the two evaluations did not score the same pairs in the same order")
    families = per_a["families"]
    out: dict[str, Any] = {"n": len(families), "families": {}}
    for direction in DIRECTIONS:
        rows = {}
        for key, higher in HEADLINE[direction]:
            if key in per_a[direction] and key in per_b[direction]:
                rows[key] = paired_delta(
                    per_a[direction][key], per_b[direction][key], higher, _min_delta(key)
                )
        out[direction] = rows
    for fam in sorted(set(families)):
        idx = [i for i, f in enumerate(families) if f == fam]
        fam_rows: dict[str, Any] = {"n": len(idx)}
        for direction in DIRECTIONS:
            for key, higher in HEADLINE[direction][:2]:
                if key in per_a[direction] and key in per_b[direction]:
                    va = [per_a[direction][key][i] for i in idx]
                    vb = [per_b[direction][key][i] for i in idx]
                    fam_rows[f"{direction}.{key}"] = paired_delta(va, vb, higher, _min_delta(key))
        out["families"][fam] = fam_rows
    return out


def merge_per_pair(blocks: list[dict[str, Any]], keys: list[list[str]]) -> dict[str, Any]:
    """Concatenate per-pair blocks, keeping the first of pairs with the same content key."""
    seen: set[str] = set()
    out: dict[str, Any] = {"ids": [], "families": [], **{d: {} for d in DIRECTIONS}}
    for block, block_keys in zip(blocks, keys, strict=True):
        for i, key in enumerate(block_keys):
            if key in seen:
                continue
            seen.add(key)
            out["ids"].append(block["ids"][i])
            out["families"].append(block["families"][i])
            for d in DIRECTIONS:
                for metric, values in block[d].items():
                    out[d].setdefault(metric, []).append(values[i])
    return out


def pair_keys(shards: Path, max_samples: int | None) -> list[str]:
    """A content hash per evaluated test pair (SEM and layout bytes), in evaluation order."""
    from semlayout.data.shards import load_split_arrays
    from semlayout.evaluation import select_indices

    data = load_split_arrays(shards, "test")
    idx = select_indices(data["families"], max_samples)
    return [
        hashlib.sha256(data["sem"][i].tobytes() + data["layout"][i].tobytes()).hexdigest()
        for i in idx
    ]


def aggregate_means(per: dict[str, Any]) -> dict[str, Any]:
    """Evaluate-shaped means ({direction: {metric: mean}}) of a per-pair block (for the gate)."""
    return {d: M.aggregate(per[d], per["families"]) for d in DIRECTIONS}


# ---------------------------------------------------------------- versions in the registry
def version_info(registry: Any, name: str, version: int | str) -> dict[str, Any]:
    """What the comparison needs to know about one version (no downloads)."""
    mv = registry.version(name, version)
    tags = dict(mv.tags or {})
    lineage = {k[len("lineage.") :]: v for k, v in tags.items() if k.startswith("lineage.")}
    gate = None
    if tags.get("gate_result"):
        try:
            gate = json.loads(tags["gate_result"])
        except json.JSONDecodeError:
            gate = None
    aliases = {a: v for a, v in (getattr(registry.model(name), "aliases", None) or {}).items()}
    return {
        "version": int(mv.version),
        "run_id": mv.run_id,
        "aliases": sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
        "registered_at": tags.get("registered_at"),
        "gate_passed": {"true": True, "false": False}.get(tags.get("gate_passed", "")),
        "gate": gate,
        "lineage": lineage,
    }


def same_data(a: dict[str, Any], b: dict[str, Any]) -> bool | None:
    """True / False when both versions record their training data's content hash, else None."""
    da, db = a["lineage"].get("data_sha256"), b["lineage"].get("data_sha256")
    if not da or not db:
        return None
    return bool(da == db)


def evaluation_sets(
    infos: list[dict[str, Any]], data: list[Path] | None, cache: Path
) -> list[EvalSet]:
    """The sets both versions are scored on: `data` when given, else each version's own
    test split (from `lineage.shards_uri`) and, when those differ, their union."""
    if data:
        for d in data:
            if not (Path(d) / "index.json").is_file():
                raise SemlayoutError(f"--data {d}: not a shard folder (no index.json)")
        sets = [EvalSet(f"--data {d}", [Path(d)]) for d in data]
    else:
        sets = []
        for info in infos:
            uri = info["lineage"].get("shards_uri")
            if not uri:
                raise SemlayoutError(
                    f"version {info['version']} does not record its test split "
                    "(no lineage.shards_uri tag: registered before semlayout recorded it); "
                    "give the pairs to score with --data SHARDS"
                )
            digest = info["lineage"].get("shards_sha256")
            if any(s.digest == digest and digest for s in sets):
                continue  # the same test split twice: score it once
            folder = _local_shards(uri, cache / f"v{info['version']}")
            sets.append(EvalSet(f"v{info['version']}'s test split", [folder], digest))
    if len(sets) > 1:
        sets.append(EvalSet("union", [p for s in sets for p in s.shards]))
    return sets


def _local_shards(uri: str, dest: Path) -> Path:
    from semlayout.storage import fetch_to_local

    try:
        folder = Path(fetch_to_local(uri, dest))
    except SemlayoutError as err:
        raise SemlayoutError(
            f"cannot read the test split at {uri} ({err}); give the pairs with --data SHARDS"
        ) from None
    if not (folder / "index.json").is_file():
        raise SemlayoutError(
            f"the test split recorded at {uri} is gone (no index.json); give --data SHARDS"
        )
    return folder


def compare_versions(
    registry: Any,
    name: str,
    a: int | str,
    b: int | str,
    data: list[Path] | None = None,
    max_samples: int | None = None,
    backend: str = "eager",
    n_samples: int = 4,
) -> dict[str, Any]:
    """Score versions `a` and `b` of `name` on the same pairs (see the module docstring).

    Returns a JSON-ready dict plus "samples" (uint8 images for the page; pop before JSON).
    """
    from semlayout.evaluation import evaluate_model
    from semlayout.gate import judge
    from semlayout.model_uri import ModelUri

    if str(a) == str(b):
        raise SemlayoutError(f"compare two different versions (got {a} twice)")
    infos = [version_info(registry, name, v) for v in (a, b)]
    ckpts = [registry.fetch(ModelUri(name, version=str(i["version"]))) for i in infos]
    with tempfile.TemporaryDirectory(prefix="semlayout-compare-") as tmp:
        sets = evaluation_sets(infos, data, Path(tmp))
        results: list[dict[str, Any]] = []
        samples: list[dict[str, Any]] = []
        per_set: dict[str, tuple[dict[str, Any], dict[str, Any], list[str]]] = {}
        for s in sets:
            if s.label == "union":
                continue
            shards = s.shards[0]
            runs = [
                evaluate_model(
                    c, shards, "test", backend, max_samples, n_report_samples=n_samples,
                    per_pair=True,
                )
                for c in ckpts
            ]  # fmt: skip
            per_set[s.label] = (
                runs[0]["per_pair"],
                runs[1]["per_pair"],
                pair_keys(shards, max_samples),
            )
            if not samples:
                samples = _paired_samples(runs[0]["samples"], runs[1]["samples"])
        for s in sets:
            if s.label == "union":
                parts = list(per_set.values())
                per_a = merge_per_pair([p[0] for p in parts], [p[2] for p in parts])
                per_b = merge_per_pair([p[1] for p in parts], [p[2] for p in parts])
            else:
                per_a, per_b, _ = per_set[s.label]
            results.append({"label": s.label, **score_table(per_a, per_b)})
            last = (per_a, per_b)
    fresh = judge(aggregate_means(last[1]), aggregate_means(last[0]), _gate_config(infos[1]))
    return {
        "name": name,
        "a": infos[0],
        "b": infos[1],
        "same_data": same_data(infos[0], infos[1]),
        "data_note": _data_note(infos[0], infos[1]),
        "sets": results,
        "b_judged_against_a": {
            "on": results[-1]["label"],
            "passed": fresh.passed,
            "reasons": fresh.reasons,
        },
        "noise_rule": f"better / worse only beyond {NOISE_SIGMAS:g} standard errors of the "
        f"per-pair differences and beyond {MIN_DELTA_DEFAULT:g} (0.01 for PSNR dB and px)",
        "samples": samples,
    }


def _gate_config(info: dict[str, Any]) -> Any:
    """The floors and tolerance B's own gate was judged with (defaults when unrecorded)."""
    from semlayout.gate import DEFAULT_FLOORS, DEFAULT_TOLERANCE, gate_config

    judged = (info.get("gate") or {}).get("judged") or {}
    floors = {
        d: float(judged[d]["floor"])
        for d in DIRECTIONS
        if isinstance(judged.get(d), dict) and judged[d].get("floor") is not None
    }
    return gate_config(
        floors=floors or dict(DEFAULT_FLOORS),
        tolerance=float(judged.get("tolerance", DEFAULT_TOLERANCE)),
    )


def _data_note(a: dict[str, Any], b: dict[str, Any]) -> str:
    va, vb = a["version"], b["version"]
    same = same_data(a, b)
    la, lb = a["lineage"], b["lineage"]
    if same is None:
        return (
            f"unknown whether v{va} and v{vb} were trained on the same data "
            "(no data_sha256 recorded); both are scored on the same pairs below"
        )
    if same:
        return f"v{va} and v{vb} were trained on the same data ({_short(la['data_sha256'])})"
    return (
        f"v{va} and v{vb} were trained on DIFFERENT data: v{va} on {la.get('data_uri') or '?'} "
        f"({_short(la['data_sha256'])}), v{vb} on {lb.get('data_uri') or '?'} "
        f"({_short(lb['data_sha256'])}). Their own metrics are not comparable; the tables "
        "below score both on the same pairs."
    )


def _paired_samples(sa: list[dict[str, Any]], sb: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (pair, direction): input, A's and B's predictions, target."""
    by_key = {(s["id"], s["direction"]): s for s in sb}
    rows = []
    for s in sa:
        other = by_key.get((s["id"], s["direction"]))
        if other is None:
            continue
        rows.append(
            {
                "id": s["id"],
                "family": s["family"],
                "direction": s["direction"],
                "input": s["input"],
                "a": s.get("layout", s["prediction"]),
                "b": other.get("layout", other["prediction"]),
                "target": s["target"],
                "a_ssim": s.get("ssim"),
                "b_ssim": other.get("ssim"),
            }
        )
    return rows
