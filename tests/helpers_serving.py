"""Fixtures for serving / monitoring tests: a drift reference, a tiny checkpoint, a real uvicorn
server.

The reference is built from synthetic pairs with *narrow* physics (normal polarity,
moderate-to-high dose) and three pattern families, so that shifts that are really
outside the training distribution can be produced: inverted contrast, very low dose,
and a pattern family the reference never saw.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REF_MIX = {"line_space": 0.5, "via_array": 0.3, "l_shape": 0.2}
OTHER_FAMILY = "random_routing"


def narrow_ranges(**over: object):  # type: ignore[no-untyped-def]
    from semlayout.data.sem_physics import PhysicsRanges

    kw = {"dose": (150.0, 3000.0), "reverse_fraction": 0.0}
    kw.update(over)
    return PhysicsRanges(**kw)  # type: ignore[arg-type]


def crop_at_truth(pairs: Path, dest: Path) -> Path:
    """Aligned folder by cropping every SEM at its known offset (what a perfect aligner writes)."""
    import csv

    from semlayout.data.pairs import (
        TEMPLATE_SHAPE,
        PairArrays,
        read_gray8,
        read_manifest,
        write_pair_folder,
    )
    from semlayout.data.synth import read_truth

    truth = read_truth(pairs)
    h, w = TEMPLATE_SHAPE
    arrays = []
    for rec in read_manifest(pairs):
        x, y = truth[rec.id]
        sem = np.ascontiguousarray(read_gray8(rec.sem_path)[y : y + h, x : x + w])
        arrays.append(PairArrays(rec.id, sem, read_gray8(rec.layout_path), rec.pattern_type))
    write_pair_folder(dest, arrays)
    with open(dest / "alignment.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["id", "x", "y", "score", "qc_pass", "reason"])
        wr.writerows([(pid, x, y, 1.0, "true", "ok") for pid, (x, y) in truth.items()])
    return dest


def synth_aligned(
    dest: Path, n: int, seed: int, mix: dict[str, float] | None = None, ranges=None
) -> Path:  # type: ignore[no-untyped-def]
    from semlayout.data.synth import synthesize

    pairs = synthesize(
        dest / "pairs",
        n,
        seed=seed,
        mix=mix or REF_MIX,
        ranges=ranges or narrow_ranges(),
        progress=False,
    )
    return crop_at_truth(pairs, dest / "aligned")


def make_reference_shards(dest: Path, n: int = 100, seed: int = 11) -> Path:
    """A shard set (and reference_stats.json) of narrow-physics synthetic pairs."""
    from semlayout.data.shards import write_shards

    aligned = synth_aligned(dest / "src", n, seed)
    write_shards(aligned, dest / "shards", val=0.2, test=0.1, seed=0)
    return dest / "shards"


def aligned_arrays(folder: Path) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    from semlayout.data.pairs import read_gray8, read_manifest

    recs = read_manifest(folder)
    return (
        [read_gray8(r.sem_path) for r in recs],
        [read_gray8(r.layout_path) for r in recs],
        [r.pattern_type for r in recs],
    )


def make_checkpoint(
    dest: Path,
    seed: int = 0,
    image_size: int = 32,
    base_filters: int = 4,
    n_down: int = 3,
    max_filters: int = 8,
) -> Path:
    """A tiny random-weight checkpoint through the documented save_checkpoint API."""
    import torch

    from semlayout.config import config_from_dict
    from semlayout.train.checkpoint import build_networks, save_checkpoint

    cfg = config_from_dict(
        {
            "name": "serving-test",
            "generator": {
                "image_size": image_size,
                "base_filters": base_filters,
                "max_filters": max_filters,
                "n_down": n_down,
                "norm": "batch",
            },
            "discriminator": {"base_filters": 4, "n_layers": 1},
        }
    )
    torch.manual_seed(seed)
    nets = build_networks(cfg)
    return Path(save_checkpoint(dest, cfg, nets, step=seed, epoch=0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(app, timeout: float = 60.0) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Serve `app` with a real uvicorn server on 127.0.0.1 in a thread; yields the base URL."""
    import httpx
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited during startup")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        if time.monotonic() > deadline:
            server.should_exit = True
            thread.join(10)
            raise TimeoutError(f"server on {url} not ready after {timeout} s")
        time.sleep(0.1)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def png_bytes(img: np.ndarray) -> bytes:
    from semlayout.data.pairs import encode_png

    return encode_png(img)


def cached_reference(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """Reference shards + held-out in-distribution and shifted sets, built once per session
    (on disk)."""
    base = tmp_path_factory.getbasetemp() / "h7-serving-data"
    done = base / "DONE"
    if not done.is_file():
        import shutil

        shutil.rmtree(base, ignore_errors=True)
        make_reference_shards(base / "ref", n=100, seed=11)
        synth_aligned(base / "fresh", 40, seed=99)
        synth_aligned(base / "lowdose", 20, seed=98, ranges=narrow_ranges(dose=(2.0, 5.0)))
        done.write_text("ok")
    return {
        "shards": base / "ref" / "shards",
        "fresh": base / "fresh" / "aligned",
        "lowdose": base / "lowdose" / "aligned",
    }


def alignable_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A raw 304x304 SEM and a 250x250 template that passes alignment QC: 40 random rectangles
    (no periodicity to confuse the match), blurred and noisy, the template cut at a random
    offset."""
    import cv2

    rng = np.random.default_rng(seed)
    field = np.zeros((304, 304), np.uint8)
    for _ in range(40):
        x, y = rng.integers(0, 290, 2)
        w, h = rng.integers(6, 40, 2)
        field[y : y + h, x : x + w] = 1
    x, y = (int(v) for v in rng.integers(0, 55, 2))
    layout = (field[y : y + 250, x : x + 250] * 255).astype(np.uint8)
    sem = cv2.GaussianBlur(40.0 + 150.0 * field, (0, 0), 1.2) + rng.normal(0, 12, (304, 304))
    return np.clip(sem, 0, 255).astype(np.uint8), layout


def drain(app, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until the server of `app` ran its deferred work (the full confidence, the
    polarity evidence of one-pass answers): the monitors' numbers are then final."""
    assert app.state.svc.writer.drain(timeout), "deferred work still running"
