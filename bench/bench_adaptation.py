"""Does the loop learn? A champion adapted to a tool it never saw, from 20 and 50 reviewed pairs.

The new tool is `tests/new_tool.py` (the independent simulator as one SEM tool: its own
families and physics, contact holes imaged dark). Its reviewed pairs are split as the loop
splits them (`semlayout.data.shards.write_shards(..., split_by="content")`, the loop's
fractions): train for the fine-tune, val for early stopping, test for the gate. The numbers
are measured on a FURTHER held-out set of the same tool (100 pairs, another seed, with their
noise-free SEMs) and on the champion's own test shard (forgetting):

- new tool: SEM->Layout IoU (the drawn layout) and Layout->SEM SSIM against the noise-free SEM;
- original test shard: SEM->Layout and Layout->SEM SSIM (what the gate judges), IoU too;
- the fine-tune gate's verdict (paired bootstrap on the reviewed test split) and its time.

The champion: `SEMLAYOUT_BENCH_MODEL` (checkpoint folder) with `SEMLAYOUT_BENCH_SHARDS` (its
shard set), else the last `make run` (outputs/latest/summary.json). The recipe is the loop's
(`semlayout.continual.LoopConfig().adaptation`); `python bench/bench_adaptation.py --set
KEY=VALUE ... --pairs N --name NAME` runs one experiment and appends it to
`$SEMLAYOUT_BENCH_CACHE/experiments.jsonl` (docs/adaptation.md is the log of them).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
POOL_SEED, HELDOUT_SEED, N_HELDOUT = 2101, 2102, 100
PAIR_COUNTS = (20, 50)


def _champion() -> tuple[Path, Path] | None:
    model, shards = (
        os.environ.get("SEMLAYOUT_BENCH_MODEL"),
        os.environ.get("SEMLAYOUT_BENCH_SHARDS"),
    )
    if model and shards:
        return Path(model), Path(shards)
    summary = ROOT / "outputs" / "latest" / "summary.json"
    if summary.is_file():
        ckpt = Path(json.loads(summary.read_text()).get("checkpoint") or "")
        shards = ckpt.parents[1] / "shard" / "shards"  # .../pipeline/<job>/{train/model,shard}
        if ckpt.is_dir() and (shards / "index.json").is_file():
            return ckpt, shards
    return None


def _cache() -> Path:
    env = os.environ.get("SEMLAYOUT_BENCH_CACHE")
    path = Path(env) if env else Path(tempfile.gettempdir()) / "semlayout-bench-adaptation"
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare(cache: Path, n_pairs: int | None = None) -> dict[str, Path]:
    """The new tool's reviewed pool, its held-out set and the reviewed shards of each of
    PAIR_COUNTS and `n_pairs` (made once; a larger count's pool starts with the smaller's)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import new_tool

    from semlayout.data.shards import write_shards
    from semlayout.train.recipe import REVIEWED_SPLIT

    out = {"heldout": cache / "heldout_shards"}
    if not (out["heldout"] / "index.json").is_file():
        folder = new_tool.write_cropped_folder(
            cache / "heldout_pairs", new_tool.tool_pairs(N_HELDOUT, HELDOUT_SEED)
        )
        write_shards(folder, out["heldout"], val=0.0, test=0.0, seed=0)
    counts = sorted({*PAIR_COUNTS, *([n_pairs] if n_pairs else [])})
    pool = new_tool.tool_pairs(max(counts), POOL_SEED)
    for n in counts:
        dest = out[f"reviewed{n}"] = cache / f"reviewed{n}_shards"
        if not (dest / "index.json").is_file():
            folder = new_tool.write_cropped_folder(cache / f"reviewed{n}_pairs", pool[:n])
            write_shards(folder, dest, seed=0, split_by="content", **REVIEWED_SPLIT)
    return out


def _headline(m: dict[str, Any]) -> dict[str, float]:
    s2l, l2s = m["sem2layout"], m["layout2sem"]
    out = {"s2l_iou": s2l["iou"], "s2l_ssim": s2l["ssim"], "l2s_ssim": l2s["ssim"]}
    if "ssim_vs_clean" in l2s:
        out["l2s_ssim_clean"] = l2s["ssim_vs_clean"]
    return {k: round(float(v), 4) for k, v in out.items()}


def score(
    model: Path, data: dict[str, Path], orig: Path, n_pairs: int, profile: str | None = None
) -> dict[str, Any]:
    """Headline numbers on the new tool's held-out set and the original test shard, plus the
    per-pair evaluations the gate needs (reviewed test split, original test shard). The new
    tool's pairs are translated with its `profile` (when the model learned one), the original
    shard without (what a request without the tool's label gets)."""
    from semlayout.evaluation import evaluate_model
    from semlayout.inference import Translator

    tool = Translator.load(model, profile=profile)
    shared = tool if tool.info["profile"] is None else Translator.load(model)  # loaded once
    new = evaluate_model(tool, data["heldout"], split="train", n_report_samples=0)
    old = evaluate_model(shared, orig, split="test", n_report_samples=0, per_pair=True)
    reviewed = evaluate_model(
        tool, data[f"reviewed{n_pairs}"], split="test", n_report_samples=0, per_pair=True
    )
    return {
        "new_tool": _headline(new),
        "original": _headline(old),
        "gate_inputs": {"orig": _lean(old), "new": _lean(reviewed)},
    }


def _lean(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("sem2layout", "layout2sem", "per_pair")}


SCORES = "per-pair ssim, ssim_lowpass (layout2sem), iou"


def champion_scores(
    champ: Path, data: dict[str, Path], orig: Path, cache: Path, n_pairs: int
) -> Any:
    # stable across runs; SCORES names what a score holds (a cached champion scored before
    # `ssim_lowpass` existed would silently turn the gate's Layout->SEM back to plain SSIM)
    key = hashlib.sha256(f"{champ.resolve()}|{SCORES}".encode()).hexdigest()[:12]
    path = cache / f"champion-{n_pairs}-{key}.json"
    if not path.is_file():
        path.write_text(json.dumps(score(champ, data, orig, n_pairs), default=float))
    return json.loads(path.read_text())


def _gate(cand: dict[str, Any], base: dict[str, Any]) -> Any:
    from semlayout.gate import DEFAULT_FLOORS, gate_config, judge_finetune

    ci, bi = cand["gate_inputs"], base["gate_inputs"]
    cfg = gate_config(floors=dict(DEFAULT_FLOORS))
    return judge_finetune(ci["new"], bi["new"], ci["orig"], bi["orig"], cfg)


def experiment(
    name: str, n_pairs: int, overrides: dict[str, Any], cache: Path, keep: bool = False
) -> dict[str, Any]:
    """Adapt the champion on n_pairs reviewed pairs with the loop's recipe + `overrides`."""
    from semlayout.continual import LoopConfig
    from semlayout.train.adaptation import adapt
    from semlayout.train.recipe import adapt_config

    found = _champion()
    assert found is not None
    champ, orig = found
    data = prepare(cache, n_pairs)
    base = champion_scores(champ, data, orig, cache, n_pairs)
    acfg = adapt_config({**LoopConfig().adaptation.model_dump(), **overrides})
    with tempfile.TemporaryDirectory(prefix="adapt-", dir=cache) as tmp:
        result = adapt(
            champ, data[f"reviewed{n_pairs}"], Path(tmp) / "model", acfg, orig,
            on_eval=lambda r: print(f"  {name}: {_brief(r)}", flush=True),
        )  # fmt: skip
        measured = score(result.path, data, orig, n_pairs, acfg.profile)
        scores = json.loads(json.dumps(measured, default=float))
    gate = _gate(scores, base)
    scores.pop("gate_inputs")
    base = {k: v for k, v in base.items() if k != "gate_inputs"}
    record = {
        "name": name,
        "n_pairs": n_pairs,
        "config": acfg.model_dump(),
        "seconds": result.seconds,
        "best_step": result.best_step,
        "steps_run": result.steps_run,
        "champion": base,
        "adapted": scores,
        "delta": {
            part: {k: round(scores[part][k] - base[part][k], 4) for k in scores[part]}
            for part in scores
        },
        "gate": {"passed": gate.passed, "confidence": gate.confidence(), "judged": gate.judged},
        "curve": result.curve if keep else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with open(cache / "experiments.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    return record


def _brief(record: dict[str, Any]) -> str:
    return " ".join(
        f"{k.replace('val_', '')}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in record.items()
        if k in ("step", "seconds") or k.startswith("val_")
    )


def _print(r: dict[str, Any]) -> None:
    d, a = r["delta"], r["adapted"]
    print(
        f"{r['name']:<18} n={r['n_pairs']:>3} {r['seconds']:>6.0f}s best@{r['best_step']:<4}"
        f" new IoU {a['new_tool']['s2l_iou']:.3f} ({d['new_tool']['s2l_iou']:+.3f})"
        f" L2S-clean {a['new_tool'].get('l2s_ssim_clean', float('nan')):.3f}"
        f" ({d['new_tool'].get('l2s_ssim_clean', float('nan')):+.3f})"
        f" | orig S2L {d['original']['s2l_ssim']:+.4f} L2S {d['original']['l2s_ssim']:+.4f}"
        f" | gate {'pass' if r['gate']['passed'] else 'FAIL'}",
        flush=True,
    )


def main(quick: bool = False) -> dict[str, Any]:
    if _champion() is None:
        print("no champion: run `make run` first or set SEMLAYOUT_BENCH_MODEL and "
              "SEMLAYOUT_BENCH_SHARDS (nothing measured)")  # fmt: skip
        return {"model": None}
    cache = _cache()
    counts = PAIR_COUNTS[-1:] if quick else PAIR_COUNTS
    results = {f"{n}_pairs": experiment(f"bench-{n}", n, {}, cache) for n in counts}
    for r in results.values():
        _print(r)
    return results


def table(cache: Path) -> str:
    """The experiments log as a markdown table (docs/adaptation.md)."""
    keys = ("lr", "replay_fraction", "ema_decay", "l2sp", "forget_budget", "directions",
            "steps", "profile", "adapter_rank")  # fmt: skip
    rows = [
        "| experiment | pairs | recipe (vs defaults) | best step / run | s | new IoU | new L2S "
        "vs clean | orig S2L SSIM | orig L2S SSIM | gate (P) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for line in (cache / "experiments.jsonl").read_text().splitlines():
        r = json.loads(line)
        c, d, a = r["config"], r["delta"], r["adapted"]
        recipe = ", ".join(f"{k}={c.get(k)}" for k in keys)
        sure = r["gate"].get("confidence")
        verdict = "pass" if r["gate"]["passed"] else "fail"
        rows.append(
            f"| {r['name']} | {r['n_pairs']} | {recipe} | {r['best_step']} / {r['steps_run']} "
            f"| {r['seconds']:.0f} | {a['new_tool']['s2l_iou']:.3f} "
            f"({d['new_tool']['s2l_iou']:+.3f}) | {a['new_tool']['l2s_ssim_clean']:.3f} "
            f"({d['new_tool']['l2s_ssim_clean']:+.3f}) | {d['original']['s2l_ssim']:+.4f} "
            f"| {d['original']['l2s_ssim']:+.4f} | {verdict} "
            f"({sure if sure is not None else float('nan'):.2f}) |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    import argparse

    if "--table" in sys.argv:
        print(table(_cache()))
        sys.exit(0)

    from semlayout.keyvalue import parse_assignments

    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    overrides = parse_assignments(args.set, "--set", "lr=1e-4")
    _print(experiment(args.name, args.pairs, overrides, _cache(), keep=True))
