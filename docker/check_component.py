"""Run the same pipeline steps (ingest -> align/QC) with the SubprocessRunner and inside the
image with the DockerRunner, and check their outputs are byte-identical.

    SEMLAYOUT_IMAGE=ghcr.io/semlayout/semlayout:0.1.0 python docker/check_component.py --out DIR
Prints one JSON line: {"identical": true, "files": N, "seconds": {"subprocess": s, "docker": s}}.
Exit 1 when the outputs differ.
"""

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=6)
    args = ap.parse_args(argv)
    if not os.environ.get("SEMLAYOUT_IMAGE"):
        print("error: set SEMLAYOUT_IMAGE to the image to run the step in", file=sys.stderr)
        return 2
    from kfp import dsl, local

    from semlayout.data.synth import synthesize
    from semlayout_components.catalog import steps

    c = steps(os.environ["SEMLAYOUT_IMAGE"])
    ingest, align_qc = c.ingest, c.align_qc

    out = Path(args.out).resolve()
    pairs = synthesize(out / "input" / "pairs", n=args.n, seed=11, progress=False)

    @dsl.pipeline(name="align-check")
    def align_check(data_uri: str) -> dsl.Dataset:
        t = ingest(data_uri=data_uri, n_synth=0, seed=0)
        return align_qc(pairs=t.outputs["pairs"], min_pass_fraction=0.0).outputs["aligned"]

    results, seconds = {}, {}
    runners = {
        "subprocess": local.SubprocessRunner(use_venv=False),
        # host network: the engine runs with --bridge=none; root so it can write the bind mount
        "docker": local.DockerRunner(network_mode="host", user=f"{os.getuid()}:{os.getgid()}"),
    }
    for name, runner in runners.items():
        # the pipeline root is bind-mounted into the container at the same path: keep the input
        # inside it
        local.init(runner=runner, pipeline_root=str(out), raise_on_error=True)
        t0 = time.perf_counter()
        aligned = align_check(data_uri=str(pairs)).output
        seconds[name] = round(time.perf_counter() - t0, 2)
        results[name] = tree_digest(Path(aligned.path))
    identical = results["subprocess"] == results["docker"]
    report = {
        "identical": identical,
        "files": len(results["docker"]),
        "seconds": seconds,
        "image": os.environ["SEMLAYOUT_IMAGE"],
    }
    if not identical:
        diff = sorted(
            k
            for k in set(results["subprocess"]) | set(results["docker"])
            if results["subprocess"].get(k) != results["docker"].get(k)
        )
        report["differ"] = diff[:20]
    print(json.dumps(report))
    return 0 if identical and results["docker"] else 1


if __name__ == "__main__":
    sys.exit(main())
