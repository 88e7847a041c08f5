"""Serving benchmark: what a client sees against the server's own forward, on the product
checkpoint, every backend timed in the same rounds.

Model: the checkpoint `make run` trained (`outputs/latest/summary.json`), or
`SEMLAYOUT_BENCH_CHECKPOINT`; without either, a random-weight checkpoint of the same config
(`small`: the same network, so the same speed; said so in the output). Requests: 250x250
synthetic SEM crops, a drift reference from synthetic pairs.

One `semlayout serve` per backend (eager fp32, ONNX Runtime, bf16 where the CPU has bf16
units, and `auto`: the default, which picks one of them at start-up), all started first. Then
`rounds` rounds; in each, every backend in turn (the first one rotating) runs three phases:
1. sequential: one client, batch 1, a warm-up request then `seq_n` timed ones; the server's
   forward for the *same* requests is read from its store by prediction id (inference_events),
   so the ratio client p50 / forward p50 compares the same requests under the same load;
2. load: 4 clients for `load_s` seconds (throughput, p50/p99, errors, mean micro-batch);
3. ceiling: the forward alone in this process, back to back at batch 4 (the largest batch 4
   clients can form) for `load_s` seconds, in a worker thread as the server runs it: the
   throughput no server can beat with this model and backend.
Reported: medians over all rounds with the 25-75 % range, and the CPU.
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.timing import Stats, describe_cpu

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 4


def product_checkpoint(work: Path) -> tuple[Path, str]:
    """(checkpoint, what it is): make run's, the one named by SEMLAYOUT_BENCH_CHECKPOINT, or a
    random-weight one of the product config."""
    given = os.environ.get("SEMLAYOUT_BENCH_CHECKPOINT")
    if given:
        return Path(given), f"SEMLAYOUT_BENCH_CHECKPOINT={given}"
    summary = ROOT / "outputs" / "latest" / "summary.json"
    if summary.is_file():
        ckpt = Path(json.loads(summary.read_text())["checkpoint"])
        if (ckpt / "weights.safetensors").is_file():
            return ckpt, f"make run's checkpoint {ckpt}"
    import torch

    from semlayout.config import load_config
    from semlayout.train.checkpoint import build_networks, save_checkpoint

    cfg = load_config("small")
    torch.manual_seed(0)
    dest = save_checkpoint(work / "ckpt", cfg, build_networks(cfg), step=0, epoch=0)
    return Path(dest), "NOT the product checkpoint: random weights of configs/small.yaml"


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
    """A `semlayout serve` subprocess; (process, URL) once /readyz answers 200."""
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
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class Server:
    """One backend's server and what the rounds measured on it."""

    def __init__(self, backend: str, ckpt: Path, ref: Path, work: Path):
        self.backend = backend
        self.db = work / f"monitor-{backend}.db"
        self.proc, self.url = _start(ckpt, backend, ref, work)
        self.seq: dict[str, float] = {}  # prediction id -> client ms
        self.load: list[dict[str, Any]] = []
        self.ceiling: list[float] = []  # images/s
        self.chosen = backend

    def post(self, client: Any, png: bytes) -> tuple[bool, str, float]:
        t0 = time.perf_counter()
        try:
            r = client.post(
                f"{self.url}/v1/translate/sem2layout", files={"image": ("x.png", png, "image/png")}
            )
        except Exception:  # noqa: BLE001 - counted as an error
            return False, "", (time.perf_counter() - t0) * 1000
        ms = (time.perf_counter() - t0) * 1000
        return r.status_code == 200, r.headers.get("x-prediction-id", ""), ms

    def sequential(self, pngs: list[bytes], n: int, start: int) -> None:
        import httpx

        with httpx.Client(timeout=60) as c:
            self.post(c, pngs[start % len(pngs)])  # warm-up: the same variant right before
            for i in range(n):
                ok, pid, ms = self.post(c, pngs[(start + i) % len(pngs)])
                if not ok:
                    raise RuntimeError(f"{self.backend}: a sequential request failed")
                self.seq[pid] = ms

    def under_load(self, pngs: list[bytes], seconds: float) -> None:
        lat, errors, wall = four_clients(self.post, pngs, seconds, warmup=True)
        self.load.append(
            {"rps": len(lat) / wall, "p50": _pct(lat, 50), "p99": _pct(lat, 99), "err": errors}
        )

    def forward_of(self, ids: list[str]) -> dict[str, float]:
        with sqlite3.connect(self.db) as db:
            rows = db.execute("SELECT prediction_id, forward_ms FROM inference_events").fetchall()
        want = set(ids)
        return {pid: ms for pid, ms in rows if pid in want}

    def batch_mean(self) -> float:
        with sqlite3.connect(self.db) as db:
            (mean,) = db.execute("SELECT AVG(batch_size) FROM inference_events").fetchone()
        return float(mean or 0.0)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def four_clients(
    post: Any, pngs: list[bytes], seconds: float, warmup: bool = False
) -> tuple[list[float], int, float]:
    """CLIENTS clients, each `post(client, png) -> (ok, id, ms)` back to back for `seconds`
    (after one untimed request each with `warmup`): (the ms of the answered ones, errors,
    wall seconds)."""
    import httpx

    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(k: int) -> None:
        with httpx.Client(timeout=120) as c:
            if warmup:
                post(c, pngs[k])
            i = k
            while time.monotonic() < stop_at:
                ok, _, ms = post(c, pngs[i % len(pngs)])
                with lock:
                    lat.append(ms) if ok else errors.__setitem__(0, errors[0] + 1)
                i += CLIENTS

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, errors[0], time.monotonic() - t0


def _ceiling(translator: Any, imgs: list[np.ndarray], seconds: float) -> float:
    """Images/s of the forward alone at batch CLIENTS, back to back, in a worker thread."""

    def run() -> float:
        translator.translate("sem2layout", imgs[:CLIENTS])  # warm-up
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            translator.translate("sem2layout", imgs[n % 8 : n % 8 + CLIENTS])
            n += CLIENTS
        return n / (time.perf_counter() - t0)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def _summary(s: Server) -> dict[str, Any]:
    fwd = s.forward_of(list(s.seq))
    ids = [pid for pid in s.seq if pid in fwd]
    client = Stats.of([s.seq[p] for p in ids])
    forward = Stats.of([fwd[p] for p in ids])
    rps = Stats.of([x["rps"] for x in s.load])
    ceiling = Stats.of(s.ceiling)
    return {
        "backend": s.backend,
        "chosen": s.chosen,
        "requests": len(ids),
        "client_p50_ms": client.to_dict(),
        "forward_p50_ms": forward.to_dict(),
        "client_over_forward": round(client.median / forward.median, 3),
        "load_rps": rps.to_dict(),
        "load_p50_ms": round(statistics.median(x["p50"] for x in s.load), 2),
        "load_p99_ms": round(statistics.median(x["p99"] for x in s.load), 2),
        "errors": sum(x["err"] for x in s.load),
        "mean_batch": round(s.batch_mean(), 2),
        "ceiling_ips": ceiling.to_dict(),
        "load_over_ceiling": round(rps.median / ceiling.median, 3),
    }


def main(quick: bool = False) -> dict[str, Any]:
    from semlayout.backend_probe import candidates
    from semlayout.data.pairs import encode_png
    from semlayout.inference import Translator

    rounds, seq_n, load_s = (2, 12, 3.0) if quick else (5, 30, 8.0)
    backends = [*candidates(), "auto"]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        ckpt, what = product_checkpoint(work)
        sems, layouts = _requests(40)
        ref = _reference(work / "ref", sems, layouts)
        pngs = [encode_png(s) for s in sems]
        servers = {b: Server(b, ckpt, ref, work) for b in backends}
        local = {b: Translator.load(ckpt, backend=b) for b in backends if b != "auto"}
        try:
            servers["auto"].chosen = _served_backend(servers["auto"].url)
            for r in range(rounds):
                for b in backends[r % len(backends) :] + backends[: r % len(backends)]:
                    s = servers[b]
                    s.sequential(pngs, seq_n, start=r * seq_n)
                    s.under_load(pngs, load_s)
                    s.ceiling.append(_ceiling(local[s.chosen], sems, load_s))
            rows = [_summary(servers[b]) for b in backends]
        finally:
            for s in servers.values():
                s.stop()
    _print(rows, what, quick)
    load = {"before": load_before, "after": os.getloadavg()}
    print(f"load average (1, 5, 15 min) before {load['before']}, after {load['after']}")
    return {"checkpoint": what, "cpu": describe_cpu(), "rows": rows, "load_average": load}


def _served_backend(url: str) -> str:
    """The backend a server runs, from its model-info metric (what `auto` chose)."""
    import re

    import httpx

    m = re.search(r'semlayout_model_info\{backend="([a-z0-9]+)"', httpx.get(f"{url}/metrics").text)
    if m is None:
        raise RuntimeError(f"{url}/metrics does not name the backend")
    return m.group(1)


def _print(rows: list[dict[str, Any]], what: str, quick: bool) -> None:
    print(f"serving bench ({'quick' if quick else 'full'}) on {what}; CPU {describe_cpu()}")
    print("medians over interleaved rounds [25-75 %]; client/forward = the same requests")
    print(
        f"{'backend':12} {'client p50':>18} {'forward p50':>18} {'ratio':>6} "
        f"{'4-client req/s':>18} {'ceiling img/s':>18} {'load/ceil':>9} {'batch':>5} {'err':>4}"
    )
    for r in rows:
        c, f, t, k = r["client_p50_ms"], r["forward_p50_ms"], r["load_rps"], r["ceiling_ips"]
        name = r["backend"] + (f" ({r['chosen']})" if r["backend"] == "auto" else "")
        print(
            f"{name:12} {c['ms']:6.2f} [{c['p25_ms']:.2f}-{c['p75_ms']:.2f}] "
            f"{f['ms']:6.2f} [{f['p25_ms']:.2f}-{f['p75_ms']:.2f}] {r['client_over_forward']:6.3f} "
            f"{t['ms']:6.1f} [{t['p25_ms']:.1f}-{t['p75_ms']:.1f}] "
            f"{k['ms']:6.1f} [{k['p25_ms']:.1f}-{k['p75_ms']:.1f}] {r['load_over_ceiling']:9.3f} "
            f"{r['mean_batch']:5.2f} {r['errors']:4d}"
        )


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
