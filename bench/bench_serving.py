"""Serving benchmark: latency and throughput of `semlayout serve`, and its overhead over the bare
model.

Setup (not timed): a random-weight generator of the served size (256 px, 32 base filters,
5 downs -- the "ngf 32" row of ENVIRONMENT.md), a drift reference from synthetic pairs,
250x250 synthetic SEM requests. For each backend (eager fp32, eager bf16, ONNX Runtime):
1. bare: `Translator.translate("sem2layout", [img])` at batch 1 in this process (the same
   work the server does minus HTTP, decoding, drift features, SQLite and PNG encoding);
2. one client, sequential requests to a real `semlayout serve` subprocess: p50 latency, and
   the overhead ratio p50_server / p50_forward - 1 (goal <= 10%), where p50_forward is the
   Translator call timed inside the server for the same requests (on a shared 2-core machine a
   separate bare measurement drifts with other users' load; it is reported beside it);
3. C concurrent clients for D seconds (60 s full, 10 s quick): p50 / p99 latency,
   throughput, errors (must be 0), and the micro-batcher's mean batch size.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

GEN = {"image_size": 256, "base_filters": 32, "max_filters": 256, "n_down": 5, "norm": "batch"}


def _checkpoint(dest: Path) -> Path:
    import torch

    from semlayout.config import config_from_dict
    from semlayout.train.checkpoint import build_networks, save_checkpoint

    cfg = config_from_dict(
        {
            "name": "bench-serving",
            "generator": GEN,
            "discriminator": {"base_filters": 8, "n_layers": 1},
        }
    )
    torch.manual_seed(0)
    return Path(save_checkpoint(dest, cfg, build_networks(cfg), step=0, epoch=0))


def _requests(n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from semlayout.data import synth

    fams = synth.assign_families(n, synth.parse_mix(None), np.random.default_rng(5))
    sems, layouts = [], []
    for i, fam in enumerate(fams):
        sem, layout, _, x, y, _ = synth.generate_pair(np.random.default_rng([5, i]), fam)
        sems.append(np.ascontiguousarray(sem[y : y + 250, x : x + 250]))
        layouts.append(layout)
    return sems, layouts


def _reference(dest: Path, sems: list[np.ndarray], layouts: list[np.ndarray]) -> Path:
    import json

    from semlayout.data.reference_stats import reference_stats

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "reference_stats.json").write_text(json.dumps(reference_stats(sems, layouts)))
    return dest / "reference_stats.json"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(ckpt: Path, backend: str, ref: Path, work: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "semlayout.cli",
            "serve",
            "--model",
            str(ckpt),
            "--backend",
            backend,
            "--port",
            str(port),
            "--reference",
            str(ref),
            "--db",
            str(work / f"monitor-{backend}.db"),
            "--feedback-uri",
            str(work / "fb"),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "SEMLAYOUT_POLL_INTERVAL_S": "0"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"semlayout serve exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError("server not ready")
        time.sleep(0.2)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _bench_backend(
    backend: str,
    ckpt: Path,
    ref: Path,
    work: Path,
    pngs: list[bytes],
    imgs: list[np.ndarray],
    seq_n: int,
    duration: float,
    clients: int,
) -> dict[str, Any]:
    import httpx

    from semlayout.inference import Translator

    def bare_run(tr: Any) -> list[float]:
        out = []
        for i in range(seq_n):
            t0 = time.perf_counter()
            tr.translate("sem2layout", [imgs[i % len(imgs)]])
            out.append((time.perf_counter() - t0) * 1000)
        return out

    # in a worker thread, as the server runs it: torch's intra-op pool behaves very differently
    # from the main thread on a loaded machine (measured 4x slower there)
    from concurrent.futures import ThreadPoolExecutor

    # measured before the server starts: two processes' thread pools would fight over 2 cores
    translator = Translator.load(ckpt, backend=backend)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(bare_run, translator).result()  # warm-up in that thread
        bare = pool.submit(bare_run, translator).result()
    del translator
    proc, url = _start(ckpt, backend, ref, work)
    try:
        seq: list[float] = []
        with httpx.Client(timeout=60) as c:

            def post(i: int) -> httpx.Response:
                return c.post(
                    f"{url}/v1/translate/sem2layout",
                    files={"image": ("x.png", pngs[i % len(pngs)], "image/png")},
                )

            for i in range(5):
                post(i)  # warm-up: first forwards, DB connection per worker thread
            for i in range(seq_n):
                t0 = time.perf_counter()
                r = post(i)
                seq.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, r.text
        # the server's own split of the same requests: handler time minus forward time
        import sqlite3

        with sqlite3.connect(work / f"monitor-{backend}.db") as db:
            rows = db.execute(
                "SELECT latency_ms, forward_ms FROM inference_events WHERE status = 'ok'"
                " ORDER BY id LIMIT ? OFFSET 5",
                (seq_n,),
            ).fetchall()
        inner = [lat_ms - fwd_ms for lat_ms, fwd_ms in rows]
        fwd_in_server = [fwd_ms for _, fwd_ms in rows]
        lat: list[float] = []
        errors = [0]
        lock = threading.Lock()
        stop_at = time.monotonic() + duration

        def client(k: int) -> None:
            with httpx.Client(timeout=60) as cc:
                i = k
                while time.monotonic() < stop_at:
                    t0 = time.perf_counter()
                    try:
                        r = cc.post(
                            f"{url}/v1/translate/sem2layout",
                            files={"image": ("x.png", pngs[i % len(pngs)], "image/png")},
                        )
                        ok = r.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    dt = (time.perf_counter() - t0) * 1000
                    with lock:
                        if ok:
                            lat.append(dt)
                        else:
                            errors[0] += 1
                    i += clients

        t_start = time.monotonic()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t_start
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        proc.terminate()
        proc.wait(30)
    batch_sum = next(
        (
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("semlayout_forward_batch_size_sum")
        ),
        0.0,
    )
    batch_n = next(
        (
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("semlayout_forward_batch_size_count")
        ),
        1.0,
    )
    bare_p50, seq_p50 = statistics.median(bare), statistics.median(seq)
    fwd_p50 = statistics.median(fwd_in_server)
    return {
        "backend": backend,
        "bare_p50_ms": bare_p50,
        "server_seq_p50_ms": seq_p50,
        "overhead_vs_bare_ratio": seq_p50 / bare_p50 - 1,
        # the goal's number: client-observed latency vs the forward (Translator call) inside the
        # server for the same requests, so both sides see the same load on a shared machine
        "overhead_ms": seq_p50 - fwd_p50,
        "overhead_ratio": seq_p50 / fwd_p50 - 1,
        "server_forward_p50_ms": fwd_p50,
        "server_handler_overhead_p50_ms": statistics.median(inner),
        "clients": clients,
        "duration_s": wall,
        "requests": len(lat),
        "errors": errors[0],
        "throughput_rps": len(lat) / wall,
        "p50_ms": _pct(lat, 50) if lat else None,
        "p99_ms": _pct(lat, 99) if lat else None,
        "mean_batch": batch_sum / max(batch_n, 1.0),
    }


def main(quick: bool = False) -> dict[str, Any]:
    from semlayout.data.pairs import encode_png

    duration = 10.0 if quick else 60.0
    seq_n = 20 if quick else 60
    clients = 4
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        ckpt = _checkpoint(work / "ckpt")
        sems, layouts = _requests(40)
        ref = _reference(work / "ref", sems, layouts)
        pngs = [encode_png(s) for s in sems]
        rows = [
            _bench_backend(b, ckpt, ref, work, pngs, sems, seq_n, duration, clients)
            for b in ("eager", "bf16", "onnx")
        ]
    print(
        f"serving bench ({'quick' if quick else 'full'}): generator {GEN['image_size']} px, "
        f"{GEN['base_filters']} base filters; 250x250 SEM requests; {clients} concurrent clients"
    )
    print(
        f"{'backend':8} {'bare p50':>9} {'fwd in srv':>11} {'server p50':>11} {'overhead':>9} "
        f"{'conc p50':>9} {'conc p99':>9} {'req/s':>7} {'batch':>6} {'errors':>6}"
    )
    for r in rows:
        print(
            f"{r['backend']:8} {r['bare_p50_ms']:8.1f}ms {r['server_forward_p50_ms']:10.1f}ms "
            f"{r['server_seq_p50_ms']:10.1f}ms "
            f"{r['overhead_ratio']:+8.1%} {r['p50_ms']:8.1f}ms {r['p99_ms']:8.1f}ms "
            f"{r['throughput_rps']:7.1f} {r['mean_batch']:6.2f} {r['errors']:6d}"
        )
    eager, bf16, onnx = rows
    for r in rows:
        print(
            f"{r['backend']}: inside the server, forward p50 {r['server_forward_p50_ms']:.1f} ms, "
            "the rest of the handler (decode, drift features, SQLite, PNG) p50 "
            f"{r['server_handler_overhead_p50_ms']:.1f} ms"
        )
    for other in (bf16, onnx):
        print(
            f"{other['backend']} vs eager: "
            f"bare {eager['bare_p50_ms'] / other['bare_p50_ms']:.2f}x faster, "
            f"throughput {other['throughput_rps'] / eager['throughput_rps']:.2f}x"
        )
    return {
        "rows": rows,
        "onnx_speedup_bare": eager["bare_p50_ms"] / onnx["bare_p50_ms"],
        "onnx_speedup_throughput": onnx["throughput_rps"] / eager["throughput_rps"],
        "bf16_speedup_bare": eager["bare_p50_ms"] / bf16["bare_p50_ms"],
        "bf16_speedup_throughput": bf16["throughput_rps"] / eager["throughput_rps"],
    }


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
