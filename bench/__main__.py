"""Run the benchmarks: `python -m bench [area ...] [--quick] [--threads N] [--json out.json]`.

Each `bench/bench_<area>.py` exposes `main(quick: bool = False) -> dict`, prints its own
table (medians, and ratios against a baseline measured in the same run) and returns the
numbers. This runner times each area and collects the results. `--threads N` sets torch's
intra-op threads for every area (default: torch's own, one per core); on a machine shared
with another CPU job, N below the core count avoids threads waiting on a descheduled peer.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

import bench


def _areas() -> list[str]:
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules(bench.__path__)
        if m.name.startswith("bench_")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("areas", nargs="*", help=f"subset of: {', '.join(_areas())}")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke check)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own)")
    parser.add_argument("--json", type=Path, help="also write all results to this file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    areas = args.areas or _areas()
    unknown = sorted(set(areas) - set(_areas()))
    if unknown:
        print(
            f"error: unknown benchmark area(s) {', '.join(unknown)}; have {', '.join(_areas())}",
            file=sys.stderr,
        )
        return 2
    results: dict[str, object] = {}
    for area in areas:
        print(f"\n=== bench: {area} ===", flush=True)
        t0 = time.perf_counter()
        mod = importlib.import_module(f"bench.bench_{area}")
        results[area] = mod.main(quick=args.quick)
        print(f"--- {area}: {time.perf_counter() - t0:.1f} s", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
