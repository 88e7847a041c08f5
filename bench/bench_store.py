"""Monitoring store backends: `semlayout serve` throughput on the PostgreSQL store against the
embedded SQLite store, at 4 concurrent clients.

Setup (not timed): the served generator (256 px, 32 base filters, as bench_serving), a drift
reference (so every request also writes its drift event), 250x250 SEM requests, a throwaway
PostgreSQL server started from the machine's binaries with its default durability (fsync and
synchronous_commit on; `tests/helpers_postgres.py`), and two `semlayout serve` processes, one
per store, both up for the whole run (an idle server costs nothing).

1. end to end: rounds of 4 clients for D seconds against one server, then the other, the
   order alternating every round (never one variant's block right after its own warm-up
   only); throughput per round, medians and spread per store, and the ratio PostgreSQL /
   SQLite per round and of the medians (the goal: >= 0.85);
2. the store alone, in this process: 4 threads committing `record_translations` (one request's
   rows: prediction with a 256 px thumbnail, inference and drift events) for D seconds,
   interleaved the same way: commits per second and their p50 / p99.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.timing import describe_cpu

REPO = Path(__file__).resolve().parents[1]
CLIENTS = 4
BACKEND = "onnx"  # what the cluster serves (k8s/base/configmap.yaml): the fastest forward,
# so the store's share of each request is the largest


def _in_threads(work: Any) -> float:
    """`work(k)` in CLIENTS threads at once; returns the wall time (s)."""
    t0 = time.monotonic()
    threads = [threading.Thread(target=work, args=(k,)) for k in range(CLIENTS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.monotonic() - t0


def _load(url: str, pngs: list[bytes], seconds: float) -> dict[str, float]:
    import httpx

    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(k: int) -> None:
        with httpx.Client(timeout=60) as c:
            i = k
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                r = c.post(
                    f"{url}/v1/translate/sem2layout",
                    files={"image": ("x.png", pngs[i % len(pngs)], "image/png")},
                )
                with lock:
                    if r.status_code == 200:
                        lat.append((time.perf_counter() - t0) * 1000)
                    else:
                        errors[0] += 1
                i += CLIENTS

    wall = _in_threads(client)
    return {
        "rps": len(lat) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "errors": errors[0],
    }


def _store_load(db: str, seconds: float, png: bytes) -> dict[str, float]:
    from semlayout.monitoring.store import MonitorStore, Prediction, TranslationRecord

    store = MonitorStore(db)
    lat: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(k: int) -> None:
        n = 0
        while time.monotonic() < stop_at:
            pid = f"b{k}-{n}-{time.monotonic_ns()}"
            n += 1
            rec = TranslationRecord(
                Prediction(pid, time.time(), "sem2layout", "1", "h" * 64, 250, 250, png),
                {"endpoint": "/v1/translate/{direction}", "status": "ok", "http_status": 200,
                 "latency_ms": 10.0, "prediction_id": pid, "input_stats": {"mean": 1.0}},
                {"direction": "sem2layout", "drifted": False, "max_abs_z": 1.0, "kl": 0.1,
                 "score": 0.3, "z": {"mean": 0.1}, "features": {"mean": 100.0},
                 "prediction_id": pid},
            )  # fmt: skip
            t0 = time.perf_counter()
            store.record_translations([rec])
            with lock:
                lat.append((time.perf_counter() - t0) * 1000)

    wall = _in_threads(worker)
    store.close()
    return {
        "commits_per_s": len(lat) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def _interleaved(variants: dict[str, Any], rounds: int, run: Any) -> dict[str, list[dict]]:
    """`run(variant)` for every variant, `rounds` times, the order alternating each round."""
    names = list(variants)
    out: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(run(variants[name]))
    return out


def _summary(rows: list[dict], key: str) -> dict[str, float]:
    values = [row[key] for row in rows]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(quick: bool = False) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests"))
    from helpers_postgres import start_postgres
    from helpers_replicas import ServeProcess

    from bench.bench_serving import _reference, _requests, product_checkpoint
    from semlayout.data.pairs import encode_png

    seconds, rounds = (5.0, 2) if quick else (20.0, 3)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp, start_postgres() as pg:
        work = Path(tmp)
        ckpt, _ = product_checkpoint(work)
        sems, layouts = _requests(40)
        ref = _reference(work / "ref", sems, layouts)
        pngs = [encode_png(s) for s in sems]
        dbs = {"sqlite": str(work / "monitor.db"), "postgresql": pg.create_database()}
        servers = {
            name: ServeProcess(
                ["--model", str(ckpt), "--backend", BACKEND, "--reference", str(ref)]
                + ["--db", db, "--feedback-uri", str(work / f"fb-{name}")],
                work / f"serve-{name}.log",
                env={"SEMLAYOUT_POLL_INTERVAL_S": "0"},
            )
            for name, db in dbs.items()
        }
        try:
            for server in servers.values():
                server.wait_ready()
            for server in servers.values():  # warm-up: first forwards, pools, ONNX sessions
                _load(server.url, pngs, 3.0)
            e2e = _interleaved(
                {n: s.url for n, s in servers.items()}, rounds, lambda u: _load(u, pngs, seconds)
            )
        finally:
            for server in servers.values():
                server.stop()
        thumb = encode_png(np.random.default_rng(0).integers(0, 256, (256, 256), np.uint8))
        store_dbs = {"sqlite": str(work / "store.db"), "postgresql": pg.create_database()}
        alone = _interleaved(store_dbs, rounds, lambda db: _store_load(db, seconds / 2, thumb))

    ratios = [p["rps"] / s["rps"] for p, s in zip(e2e["postgresql"], e2e["sqlite"], strict=True)]
    res = {
        "cpu": describe_cpu(),
        "clients": CLIENTS,
        "backend": BACKEND,
        "seconds_per_round": seconds,
        "rounds": rounds,
        "throughput_rps": {n: _summary(rows, "rps") for n, rows in e2e.items()},
        "p99_ms": {n: _summary(rows, "p99_ms") for n, rows in e2e.items()},
        "errors": {n: sum(r["errors"] for r in rows) for n, rows in e2e.items()},
        "ratio_per_round": ratios,
        "ratio_of_medians": statistics.median(r["rps"] for r in e2e["postgresql"])
        / statistics.median(r["rps"] for r in e2e["sqlite"]),
        "store_alone": {
            n: {k: _summary(rows, k) for k in ("commits_per_s", "p50_ms", "p99_ms")}
            for n, rows in alone.items()
        },
    }
    _print(res)
    return res


def _print(res: dict[str, Any]) -> None:
    print(
        f"store bench: {res['clients']} clients, backend {res['backend']}, {res['rounds']} "
        f"interleaved rounds of {res['seconds_per_round']:.0f} s; CPU {res['cpu']}"
    )
    print(f"{'store':11} {'req/s median':>13} {'(min-max)':>15} {'p99 ms':>8} {'errors':>7}")
    for n, t in res["throughput_rps"].items():
        print(
            f"{n:11} {t['median']:13.1f} {t['min']:7.1f}-{t['max']:<7.1f} "
            f"{res['p99_ms'][n]['median']:8.1f} {res['errors'][n]:7d}"
        )
    per_round = ", ".join(f"{r:.3f}" for r in res["ratio_per_round"])
    print(
        f"PostgreSQL / SQLite throughput: {res['ratio_of_medians']:.3f} "
        f"(per round: {per_round}; goal >= 0.85)"
    )
    for n, s in res["store_alone"].items():
        print(
            f"store alone, {n}: {s['commits_per_s']['median']:.0f} request commits/s "
            f"(p50 {s['p50_ms']['median']:.2f} ms, p99 {s['p99_ms']['median']:.2f} ms)"
        )


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
