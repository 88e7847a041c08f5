"""Did a change to the aligner change its answers? Every pair of bench_align's held-out sets
aligned as `semlayout align` does (the data set's prior estimated from the confident pairs,
the pairs it can help aligned again), every field of every result written as JSON; then two
such files compared field by field.

    python -m bench.align_results dump before.json [--scale 0.1] [--base 1600]
    (change the code)
    python -m bench.align_results dump after.json [--scale 0.1]
    python -m bench.align_results compare before.json after.json

`compare` prints the pairs whose verdict, placement or polarity changed, counts the results
that differ in any float (and by how much at most), and the sets' yield / wrong+QC / right.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

INFO_FIELDS = ("distortion_estimated",)  # did the patch estimate run (not part of the answer)
FLOAT_TOL = 1e-6  # relative: below this a float difference is rounding, not a changed answer


def dump(path: str, scale: float, base: int | None = None, screen_px: float | None = None) -> None:
    import cv2

    from bench import bench_align as ba
    from semlayout.data.align import AlignConfig, align_pair
    from semlayout.data.align_polarity import estimate_priors, needs_prior

    cv2.setNumThreads(1)
    cfg = AlignConfig() if screen_px is None else AlignConfig(distortion_screen_px=screen_px)
    sim, out = ba._sim(), {}
    sets = ba.make_sets(scale, ba.SEED_BASE if base is None else base)
    for name, pairs in sets.items():
        c0 = time.process_time()
        res = [align_pair(p.sem, p.layout, cfg) for p in pairs]
        table = estimate_priors(
            ((p.family, r) for p, r in zip(pairs, res, strict=True)),
            cfg.min_polarity_margin,
            cfg.prior_min_pairs,
            cfg.prior_min_share,
        )
        for i, p in enumerate(pairs):
            if needs_prior(res[i], table.for_pattern(p.family)):
                res[i] = align_pair(p.sem, p.layout, cfg, table.for_pattern(p.family))
        ms = 1000 * (time.process_time() - c0) / len(pairs)
        q = ba._scores(pairs, res, sim)
        out[name] = {"results": [dataclasses.asdict(r) for r in res], "scores": q, "ms": ms}
        print(
            f"{name:27s} n={len(pairs):4d} yield {100 * q['yield']:5.1f} % wrong+QC "
            f"{100 * q['wrong_passed']:4.2f} % right {100 * q['right']:5.1f} % {ms:5.1f} ms CPU",
            flush=True,
        )
    with open(path, "w") as f:
        json.dump(out, f)


def _close(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= FLOAT_TOL * max(1.0, abs(a))
    return a == b


def compare(before: str, after: str) -> int:
    with open(before) as f:
        a = json.load(f)
    with open(after) as f:
        b = json.load(f)
    n = n_float = n_changed = 0
    worst = 0.0
    info: dict[str, int] = {}
    for name in a:
        for i, (ra, rb) in enumerate(zip(a[name]["results"], b[name]["results"], strict=True)):
            n += 1
            rb = {k: rb[k] for k in ra if k in rb}  # fields added since `before` are not compared
            for k in INFO_FIELDS:  # what the aligner did, not what it answered: counted apart
                if k in ra and k in rb and ra[k] != rb[k]:
                    info[k] = info.get(k, 0) + 1
                ra, rb = {q: v for q, v in ra.items() if q != k}, rb
                rb.pop(k, None)
            if ra == rb:
                continue
            changed = {k: (ra[k], rb[k]) for k in ra if not _close(ra[k], rb[k])}
            if changed:
                n_changed += 1
                print(f"  {name} #{i}: {changed}")
                continue
            n_float += 1
            worst = max(
                [worst] + [abs(ra[k] - rb[k]) / max(1.0, abs(ra[k])) for k in ra if ra[k] != rb[k]]
            )
        sa, sb = a[name]["scores"], b[name]["scores"]
        if sa != sb:
            print(f"  {name}: scores {sa} -> {sb}")
    print(
        f"{n} results: {n_changed} changed, {n_float} differ only in a float "
        f"(at most {worst:.1e} relative), {n - n_changed - n_float} identical; "
        f"{', '.join(f'{k} differs on {v}' for k, v in info.items()) or 'no other difference'}"
    )
    return 1 if n_changed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("path")
    d.add_argument("--scale", type=float, default=0.1, help="share of bench_align's set sizes")
    d.add_argument(
        "--base", type=int, default=None, help="seed base (default bench_align.SEED_BASE)"
    )
    d.add_argument(
        "--screen-px",
        type=float,
        default=None,
        help="AlignConfig.distortion_screen_px (0: the patch estimate on every pair, as before "
        "the screen)",
    )
    c = sub.add_parser("compare")
    c.add_argument("before")
    c.add_argument("after")
    args = ap.parse_args()
    if args.cmd == "dump":
        dump(args.path, args.scale, args.base, args.screen_px)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    raise SystemExit(main())
