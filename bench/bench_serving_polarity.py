"""Serving bench of `polarity=auto` by layer state (issue 20): what a client sees when the
layer's polarity is settled (one generator pass, the image's evidence read after the answer,
`serving.layer_evidence`) against an unsettled layer (four passes) and `polarity=bright`.

One `semlayout serve` of the product checkpoint (`bench_serving.product_checkpoint`:
`SEMLAYOUT_BENCH_CHECKPOINT`, make run's, or random weights, said so) on one backend
(`SEMLAYOUT_BENCH_BACKEND`, default bf16 where the CPU has it, else eager), one torch thread
(`OMP_NUM_THREADS=1`) in the server and in this process. With `SEMLAYOUT_BENCH_BASELINE_SRC`
(e.g. /work/main/src) a second server runs that source tree (`PYTHONPATH`): the request path
before the change, timed in the same rounds. Requests: 250x250 synthetic SEM crops of
normal (bright) contrast, a drift reference from synthetic pairs.

Variants (per server): **auto, unsettled** (a fresh layer label per request: the image
decides, four passes), **auto, settled** (a layer configured bright with
`PUT /v1/layers/{layer}/polarity`), **bright** (`polarity=bright`). `rounds` rounds; in each:
1. sequential, batch 1, variants interleaved request by request (the first rotating), a
   warm-up request of the same variant before each timed one and a pause after each so that
   the deferred work of the previous request does not overlap the timed one (it is measured
   under load, below); the server's forward and path for the same requests from its store;
2. load: 4 clients for `load_s` seconds per variant, then until the server is idle again (its
   CPU time stops growing: the deferred work the load left behind is done): req/s over the
   load alone and over load + drain (what the server sustains, deferred work included);
3. ceiling: the forward alone in this process, batch 4, back to back: four passes (auto) or
   one (bright) - what a server's answers can reach at best.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_serving import (
    _ceiling,
    _reference,
    _start,
    four_clients,
    product_checkpoint,
)
from bench.timing import Stats, describe_cpu

TOKEN = "bench-serving-polarity"
VARIANTS = ("auto-unsettled", "auto-settled", "bright")
PAUSE_S = 0.3


def _bright_requests(n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`n` 250x250 SEM crops of normal contrast and their layouts."""
    from semlayout.data import synth

    sems: list[np.ndarray] = []
    layouts: list[np.ndarray] = []
    fams = synth.assign_families(4 * n, synth.parse_mix(None), np.random.default_rng(7))
    for i, fam in enumerate(fams):
        sem, layout, _, x, y, meta = synth.generate_pair(np.random.default_rng([7, i]), fam)
        if int(meta.get("polarity", 1)) != 1:
            continue
        sems.append(np.ascontiguousarray(sem[y : y + 250, x : x + 250]))
        layouts.append(layout)
        if len(sems) == n:
            break
    return sems, layouts


class Target:
    """One server (this tree's or the baseline's) and what was measured on it."""

    def __init__(self, name: str, proc: Any, url: str, db: Path):
        import httpx

        self.name, self.proc, self.url, self.db = name, proc, url, db
        self.seq: dict[str, dict[str, float]] = {v: {} for v in VARIANTS}  # pid -> client ms
        self.load: dict[str, list[float]] = {v: [] for v in VARIANTS}  # req/s per round
        self.sustained: dict[str, list[float]] = {v: [] for v in VARIANTS}  # with the drain
        self.errors = 0
        self._fresh = 0
        self.timings: dict[str, str] = {}  # pid -> the answer's Server-Timing header
        r = httpx.put(
            f"{url}/v1/layers/settled/polarity",
            json={"polarity": "bright"},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        r.raise_for_status()

    def params(self, variant: str) -> dict[str, str]:
        if variant == "bright":
            return {"polarity": "bright"}
        if variant == "auto-settled":
            return {"layer": "settled"}
        self._fresh += 1  # a layer that has read nothing: the image decides
        return {"layer": f"fresh-{self._fresh}"}

    def post(self, client: Any, png: bytes, variant: str) -> tuple[bool, str, float]:
        params = self.params(variant)
        t0 = time.perf_counter()
        try:
            r = client.post(
                f"{self.url}/v1/translate/sem2layout",
                params=params,
                files={"image": ("x.png", png, "image/png")},
            )
        except Exception:  # noqa: BLE001 - counted as an error
            return False, "", (time.perf_counter() - t0) * 1000
        ms = (time.perf_counter() - t0) * 1000
        pid = r.headers.get("x-prediction-id", "")
        if "server-timing" in r.headers:  # a tree before the header has none
            self.timings[pid] = r.headers["server-timing"]
        return r.status_code == 200, pid, ms

    def under_load(self, pngs: list[bytes], variant: str, seconds: float) -> None:
        t0 = time.monotonic()
        lat, errors, wall = four_clients(lambda c, png: self.post(c, png, variant), pngs, seconds)
        self.errors += errors
        self.load[variant].append(len(lat) / wall)
        self.idle()
        self.sustained[variant].append(len(lat) / (time.monotonic() - t0))

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def idle(self, timeout: float = 300.0) -> None:
        """Wait until the server's CPU time grows by < 20 ms in 0.5 s (its deferred work is
        done)."""
        deadline = time.monotonic() + timeout
        last = self.cpu_s()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.cpu_s()
            if now - last < 0.02:
                return
            last = now

    def stored(self) -> dict[str, tuple[float, float]]:
        """prediction id -> (forward ms, server path ms) from the store."""
        with sqlite3.connect(self.db) as db:
            rows = db.execute(
                "SELECT prediction_id, forward_ms, latency_ms FROM inference_events"
            ).fetchall()
        return {pid: (fwd, lat) for pid, fwd, lat in rows if pid}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def _sequential(targets: list[Target], pngs: list[bytes], n: int, r: int) -> None:
    import httpx

    pairs = [(t, v) for t in targets for v in VARIANTS]
    pairs = pairs[r % len(pairs) :] + pairs[: r % len(pairs)]
    clients = {t.name: httpx.Client(timeout=120) for t in targets}
    try:
        for i in range(n):
            png = pngs[(r * n + i) % len(pngs)]
            for t, v in pairs:
                c = clients[t.name]
                t.post(c, png, v)  # warm-up: the same variant right before
                time.sleep(PAUSE_S)
                ok, pid, ms = t.post(c, png, v)
                if not ok:
                    raise RuntimeError(f"{t.name} {v}: a sequential request failed")
                t.seq[v][pid] = ms
                time.sleep(PAUSE_S)  # its deferred work done before the next timed one
    finally:
        for c in clients.values():
            c.close()


def _rows(targets: list[Target], ceilings: dict[str, list[float]]) -> list[dict[str, Any]]:
    rows = []
    for t in targets:
        stored = t.stored()
        for v in VARIANTS:
            ids = [p for p in t.seq[v] if p in stored]
            client = Stats.of([t.seq[v][p] for p in ids])
            forward = Stats.of([stored[p][0] for p in ids])
            path = Stats.of([stored[p][1] for p in ids])
            rps = Stats.of(t.load[v])
            sustained = Stats.of(t.sustained[v])
            ceiling = Stats.of(ceilings["auto" if v == "auto-unsettled" else "one"])
            rows.append(
                {
                    "stages_ms": _stages(t, ids),
                    "server": t.name,
                    "variant": v,
                    "requests": len(ids),
                    "client_ms": client.to_dict(),
                    "forward_ms": forward.to_dict(),
                    "path_ms": path.to_dict(),
                    "client_over_forward": round(client.median / forward.median, 3),
                    "client_minus_forward_ms": round(client.median - forward.median, 2),
                    "load_rps": rps.to_dict(),
                    "ceiling_ips": ceiling.to_dict(),
                    "load_over_ceiling": round(rps.median / ceiling.median, 3),
                    "sustained_rps": sustained.to_dict(),
                    "sustained_over_ceiling": round(sustained.median / ceiling.median, 3),
                }
            )
    return rows


def _stages(t: Target, ids: list[str]) -> dict[str, float]:
    """Median ms of each Server-Timing stage over the sequential requests `ids` (the server's
    own account of where a request's time went, `serving.server_timing`)."""
    per: dict[str, list[float]] = {}
    for pid in ids:
        for part in t.timings.get(pid, "").split(", "):
            if ";dur=" in part:
                name, dur = part.split(";dur=")
                per.setdefault(name, []).append(float(dur))
    return {name: round(float(np.median(v)), 2) for name, v in per.items()}


def _backend() -> str:
    from semlayout.backend_probe import candidates

    given = os.environ.get("SEMLAYOUT_BENCH_BACKEND")
    return given or ("bf16" if "bf16" in candidates() else "eager")


def main(quick: bool = False) -> dict[str, Any]:
    import torch

    from semlayout.data.pairs import encode_png
    from semlayout.inference import Translator

    rounds, seq_n, load_s = (1, 3, 2.0) if quick else (3, 10, 8.0)
    os.environ.update({"OMP_NUM_THREADS": "1", "SEMLAYOUT_ADMIN_TOKEN": TOKEN})
    torch.set_num_threads(1)
    backend, baseline = _backend(), os.environ.get("SEMLAYOUT_BENCH_BASELINE_SRC")
    load_before = os.getloadavg()
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-serving-polarity-") as tmp:
        work = Path(tmp)
        ckpt, what = product_checkpoint(work)
        sems, layouts = _bright_requests(24)
        ref = _reference(work / "ref", sems, layouts)
        pngs = [encode_png(s) for s in sems]
        trees = {"this": None, **({"baseline": baseline} if baseline else {})}
        targets = []
        for name, src in trees.items():
            (work / name).mkdir()
            saved = os.environ.get("PYTHONPATH")
            if src:
                os.environ["PYTHONPATH"] = src
            try:
                proc, url = _start(ckpt, backend, ref, work / name)
            finally:
                if src:
                    os.environ.pop("PYTHONPATH")
                    if saved is not None:
                        os.environ["PYTHONPATH"] = saved
            targets.append(Target(name, proc, url, work / name / f"monitor-{backend}.db"))
        local = Translator.load(ckpt, backend=backend)
        ceilings: dict[str, list[float]] = {"auto": [], "one": []}
        try:
            for r in range(rounds):
                _sequential(targets, pngs, seq_n, r)
                for t in targets[r % len(targets) :] + targets[: r % len(targets)]:
                    for v in VARIANTS:
                        t.under_load(pngs, v, load_s)
                ceilings["auto"].append(_ceiling(local, sems, load_s))
                ceilings["one"].append(_ceiling(_Bright(local), sems, load_s))
            rows = _rows(targets, ceilings)
            errors = {t.name: t.errors for t in targets}
        finally:
            for t in targets:
                t.stop()
    load = {"before": load_before, "after": os.getloadavg()}
    out = {
        "checkpoint": what,
        "backend": backend,
        "baseline_src": baseline,
        "cpu": describe_cpu(),
        "rows": rows,
        "errors": errors,
        "load_average": load,
        "seconds": round(time.time() - t_start, 1),
    }
    _print(out)
    return out


class _Bright:
    """A translator whose `translate` runs `polarity=bright` (one pass), for `_ceiling`."""

    def __init__(self, translator: Any):
        self.translator = translator

    def translate(self, direction: str, images: list[np.ndarray]) -> Any:
        return self.translator.translate(direction, images, polarity="bright")


def _print(out: dict[str, Any]) -> None:
    print(f"serving polarity bench on {out['checkpoint']}, backend {out['backend']}")
    print(f"CPU {out['cpu']}; one torch thread; {out['seconds']} s; errors {out['errors']}")
    print(
        f"{'server':8} {'variant':15} {'client p50 [IQR]':>22} {'forward p50':>12} "
        f"{'path p50':>9} {'ratio':>6} {'4-client req/s':>15} {'ceiling':>8} {'load/ceil':>9}"
        f" {'with drain':>10} {'/ceil':>6}"
    )
    for r in out["rows"]:
        c, f, p, t, k = (
            r[x] for x in ("client_ms", "forward_ms", "path_ms", "load_rps", "ceiling_ips")
        )
        print(
            f"{r['server']:8} {r['variant']:15} {c['ms']:7.1f} "
            f"[{c['p25_ms']:.1f}-{c['p75_ms']:.1f}] {f['ms']:12.1f} {p['ms']:9.1f} "
            f"{r['client_over_forward']:6.3f} {t['ms']:15.2f}"
            f" {k['ms']:8.2f} {r['load_over_ceiling']:9.3f}"
            f" {r['sustained_rps']['ms']:10.2f} {r['sustained_over_ceiling']:6.3f}"
        )
    for r in out["rows"]:
        if r["stages_ms"]:
            stages = "  ".join(f"{k} {v:.2f}" for k, v in r["stages_ms"].items())
            print(f"  {r['server']} {r['variant']} Server-Timing p50 (ms): {stages}")
    load = out["load_average"]
    print(f"load average (1, 5, 15 min) before {load['before']}, after {load['after']}")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
