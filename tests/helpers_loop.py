"""Helpers for the continuous-learning loop end-to-end test (tests/test_loop_e2e.py).

The scenario: a champion trained on synthetic data WITHOUT one pattern family
(`NEW_FAMILY`) and with narrow SEM physics (moderate-to-high dose, normal polarity);
then traffic and reviewed pairs of that family arrive. Everything a user would touch
goes through the real parts: the `semlayout` CLI in subprocesses, a real uvicorn
server (`semlayout serve`), a real SQLite MLflow registry, moto's S3 server over HTTP,
and the fine-tune pipeline under kfp.local.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NEW_FAMILY = "via_array"
# the champion's families: every family but NEW_FAMILY
ORIG_MIX = {"line_space": 0.4, "line_end": 0.2, "l_shape": 0.2, "t_shape": 0.2}
NARROW_DOSE = (150.0, 3000.0)
LOW_DOSE = (4.0, 25.0)  # electrons/pixel: far below anything the champion saw

# A CPU-minutes model: 64 px, 4 downsamplings, 8 base filters. It checks that the loop
# works and that fine-tuning moves the right numbers, not state-of-the-art quality.
E2E_CONFIG = """\
# tests/test_loop_e2e.py: a small model trained in a couple of CPU minutes
name: loop-e2e
generator: {image_size: 64, base_filters: 8, max_filters: 64, n_down: 4, dropout: 0.0, \
dropout_blocks: 0,
            norm: batch, attention: false}
discriminator: {base_filters: 8, n_layers: 2, spectral_norm: true, norm: instance}
loss: {gan_mode: lsgan, lambda_l1: 100.0, lambda_cycle: 10.0, lambda_fm: 10.0, real_label: 0.9}
train: {epochs: %(epochs)d, decay_start_epoch: %(decay)d, batch_size: 4, lr: 0.001, buffer_size: 8,
        augment: true, checkpoint_every: 100000, val_samples: 4, sample_images: 1, seed: 0,
        num_threads: %(threads)d}
"""


def ranges(dose: tuple[float, float] = NARROW_DOSE):  # type: ignore[no-untyped-def]
    from semlayout.data.sem_physics import PhysicsRanges

    return PhysicsRanges(dose=dose, reverse_fraction=0.0)


def write_config(path: Path, epochs: int, decay: int, threads: int = 2) -> Path:
    path.write_text(E2E_CONFIG % {"epochs": epochs, "decay": decay, "threads": threads})
    return path


def synth(
    dest: Path, n: int, seed: int, mix: dict[str, float], dose: tuple[float, float] = NARROW_DOSE
) -> Path:
    from semlayout.data.synth import synthesize

    return Path(synthesize(dest, n, seed=seed, mix=mix, ranges=ranges(dose), progress=False))


def split_pair_folder(src: Path, dests: list[Path], sizes: list[int]) -> list[Path]:
    """Write consecutive slices of `src`'s pairs (raw 304x304 SEM + template) as new pair
    folders."""
    from semlayout.data.pairs import PairArrays, read_gray8, read_manifest, write_pair_folder

    recs = read_manifest(src)
    start = 0
    for dest, k in zip(dests, sizes, strict=True):
        part = recs[start : start + k]
        start += k
        write_pair_folder(
            dest,
            [
                PairArrays(r.id, read_gray8(r.sem_path), read_gray8(r.layout_path), r.pattern_type)
                for r in part
            ],
        )
    return dests


def cropped_sems(pairs: Path) -> list[np.ndarray]:
    """The 250x250 SEM crops at the true template offsets (what a client sends after aligning)."""
    from semlayout.data.pairs import read_gray8, read_manifest
    from semlayout.data.synth import read_truth

    truth = read_truth(pairs)
    out = []
    for rec in read_manifest(pairs):
        x, y = truth[rec.id]
        out.append(np.ascontiguousarray(read_gray8(rec.sem_path)[y : y + 250, x : x + 250]))
    return out


def train_champion(
    root: Path, pairs: Path, cfg_path: Path, tracking_uri: str, model_name: str
) -> dict[str, Any]:
    """The library calls the training pipeline makes (align -> shard -> train -> evaluate ->
    gate -> track -> register), then the release manager's approval as `champion`.

    Shards use the fine-tune pipeline's original-data split (val 0.1, test 0.2, seed 0), so
    its forgetting check runs on the very test shard the champion never trained on."""
    from semlayout.config import load_config
    from semlayout.data.align_folder import align_folder
    from semlayout.data.shards import write_shards
    from semlayout.evaluation import evaluate_model
    from semlayout.gate import GateConfig, judge
    from semlayout.registry import Registry
    from semlayout.train.loop import train

    aligned = root / "aligned"
    align_folder(pairs, aligned)
    shards = root / "shards"
    write_shards(aligned, shards, val=0.1, test=0.2, seed=0)
    cfg = load_config(cfg_path)
    t0 = time.perf_counter()
    final = Path(train(cfg, shards, root / "run", progress=False))
    seconds = time.perf_counter() - t0
    metrics = evaluate_model(final, shards, split="test")
    metrics.pop("samples", None)
    gate = judge(metrics, None, GateConfig(floors={"sem2layout": 0.0, "layout2sem": 0.0}))
    run_id = Registry(tracking_uri, create=True).log_run(
        "semlayout-e2e", final, metrics, params={"config": str(cfg_path)}
    )
    version = Registry(tracking_uri).register(
        model_name, run_id, gate, lineage={"data_uri": str(pairs)}
    )
    Registry(tracking_uri).approve(
        model_name, version, by="release-manager", reason="first champion"
    )
    return {
        "shards": shards,
        "checkpoint": final,
        "version": str(version),
        "metrics": metrics,
        "train_seconds": round(seconds, 1),
    }


# the fine-tune recipe for the tests' tiny 64 px models: no crops, a few hundred steps
TINY_ADAPTATION = {
    "steps": 240,
    "lr": 5e-4,
    "crop_size": None,
    "replay_fraction": 0.25,
    "eval_every": 40,
}


def write_loop_config(
    path: Path,
    root: Path,
    policy: dict[str, Any],
    serving: dict[str, str],
    finetune_overrides: dict[str, Any],
    tolerance: float,
    adaptation: dict[str, Any] | None = None,
) -> Path:
    """The loop config both end-to-end tests run (`semlayout loop check|run --config`): the
    fine-tune of `serving["model_name"]`'s champion on the reviewed pairs + 24 replayed
    originals (`serving["original_data_uri"]`), floors out of the way (the tiny model's SSIM is
    below any real floor: the fine-tune gate judges the new family and forgetting), work in
    `root / "loop"`. `serving`: monitor_db, feedback_dir, tracking_uri, model_name,
    original_data_uri, config, and intake_uri when there is one."""
    path.write_text(
        json.dumps(
            {
                "policy": policy,
                **serving,
                "replay_n": 24,
                "finetune_overrides": finetune_overrides,
                # the loop's recipe (semlayout.train.recipe.AdaptConfig), sized for the test
                "adaptation": adaptation or TINY_ADAPTATION,
                "floors": {"sem2layout": 0.0, "layout2sem": 0.0},
                "tolerance": tolerance,
                "min_improvement": 0.0,
                "workdir": str(root / "loop"),
            }
        )
    )
    return path


def heldout_shards(pairs: Path, dest: Path) -> Path:
    """Aligned and sharded as one split ("train"): a set only for scoring."""
    from semlayout.data.align_folder import align_folder
    from semlayout.data.shards import write_shards

    align_folder(pairs, dest.with_name(dest.name + "-aligned"))
    write_shards(dest.with_name(dest.name + "-aligned"), dest, val=0.0, test=0.0, seed=0)
    return dest


def heldout_gain(champion: Path, challenger: Path, shards: Path) -> dict[str, float]:
    """Challenger minus champion on `shards`: SEM->Layout IoU and Layout->SEM SSIM."""
    from semlayout.evaluation import evaluate_model

    a, b = (
        evaluate_model(m, shards, split="train", n_report_samples=0) for m in (champion, challenger)
    )
    return {
        "sem2layout_iou": round(b["sem2layout"]["iou"] - a["sem2layout"]["iou"], 4),
        "layout2sem_ssim": round(b["layout2sem"]["ssim"] - a["layout2sem"]["ssim"], 4),
        "champion_iou": round(a["sem2layout"]["iou"], 4),
        "challenger_iou": round(b["sem2layout"]["iou"], 4),
    }


# --------------------------------------------------------------------------- processes
def cli_env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def e2e_env(
    monkeypatch: Any, tmp_path: Path, tracking: str, extra: dict[str, str]
) -> dict[str, str]:
    """The registry and model cache for this process (monkeypatched) and the CLI's environment
    (`cli_env` with them and `extra`)."""
    cache = str(tmp_path / "model-cache")
    monkeypatch.setenv("SEMLAYOUT_CACHE_DIR", cache)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    return cli_env({"MLFLOW_TRACKING_URI": tracking, "SEMLAYOUT_CACHE_DIR": cache, **extra})


def cli(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`semlayout ARGS` as a user runs it (a subprocess of this interpreter)."""
    return subprocess.run(
        [sys.executable, "-m", "semlayout.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 240) -> Iterator[str]:
    """`semlayout serve ARGS --host 127.0.0.1 --port P` in its own process group; yields the URL."""
    port = free_port()
    log = cwd / f"serve-{port}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "semlayout.cli",
                "serve",
                *args,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"semlayout serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"semlayout serve did not get ready in {timeout:.0f} s:\n"
                    f"{log.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def png(img: np.ndarray) -> bytes:
    from semlayout.data.pairs import encode_png

    return encode_png(img)


def load_json(text: str) -> Any:
    return json.loads(text)
