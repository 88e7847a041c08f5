"""How a generator runs for `semlayout.inference.Translator`: eager PyTorch or ONNX Runtime,
and `load_generators` (a checkpoint's two generators, without its discriminators).

A `Runner` maps a (B, 1, S, S) float32 batch in [-1, 1] and the (B,) float32 polarity of
each image (+1 / -1) to the (B, 1, S, S) output. A generator that is not
polarity-conditioned ignores the polarity (its ONNX graph has no such input).

ONNX: uses `CKPT/<direction>.onnx` when present. Otherwise it exports: into the
checkpoint folder itself when that folder was given locally, and into a cache
folder (keyed by the weights' hash) when it came from the registry, so a
downloaded artifact folder is never modified. A conditioned generator's graph has two
inputs, `input` (B, 1, S, S) and `polarity` (B,).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from semlayout.directions import DIRECTIONS
from semlayout.errors import SemlayoutError

NET_FOR_DIRECTION = {d: d.generator for d in DIRECTIONS}

_EXPORT_LOCK = threading.Lock()

# (B, 1, S, S) float32 in [-1, 1], (B,) float32 +-1 -> (B, 1, S, S) float32 in [-1, 1]
Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]


def is_conditioned(net: Any) -> bool:
    """Whether a generator takes the polarity (`generator.polarity_conditioning` != none)."""
    return getattr(net, "conditioning", "none") != "none"


def onnx_example(net: Any, image_size: int) -> tuple[Any, ...]:
    """Example inputs for export: (x,) or (x, polarity), batch 2 so the batch axis stays
    symbolic."""
    import torch

    x = torch.zeros(2, 1, image_size, image_size)
    return (x, torch.tensor([1.0, -1.0])) if is_conditioned(net) else (x,)


def export_generator_onnx(net: Any, dest: Path, image_size: int) -> Path:
    """Export one generator to ONNX with a dynamic batch axis, atomically (temp file + rename)."""
    import torch

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    example = onnx_example(net, image_size)
    names = ["input", "polarity"][: len(example)]
    net = net.eval()
    try:
        with warnings.catch_warnings():
            # the tracer warns about Python-side shape checks; ONNX is checked against eager in
            # tests
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                example,
                str(tmp),
                input_names=names,
                output_names=["output"],
                dynamic_axes={**{n: {0: "batch"} for n in names}, "output": {0: "batch"}},
                opset_version=18,
                dynamo=False,
            )
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _weights_digest(ckpt: Path) -> str:
    h = hashlib.sha256()
    for name in ("weights.safetensors", "config.json"):
        with open(ckpt / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:20]


def default_cache_dir() -> Path:
    from semlayout.cache import cache_dir

    return cache_dir("onnx")


def onnx_files(
    ckpt: Path, registry: bool, cache_dir: Path | None, nets: dict[str, Any], size: int
) -> dict[str, Path]:
    """Where each direction's ONNX file is; export the missing ones (see module docstring)."""
    found: dict[str, Path] = {d: ckpt / f"{d}.onnx" for d in DIRECTIONS}
    if all(p.is_file() for p in found.values()):
        return found
    if not registry and os.access(ckpt, os.W_OK):
        target = ckpt
    else:
        target = (cache_dir or default_cache_dir()) / _weights_digest(ckpt)
        cached: dict[str, Path] = {d: target / f"{d}.onnx" for d in DIRECTIONS}
        if all(p.is_file() for p in cached.values()):
            return cached
    target.mkdir(parents=True, exist_ok=True)
    exporter: Callable[[Any, Path, int], Path] = export_generator_onnx
    # the trainer's exporter (dynamo, opset 18) when present; the TorchScript exporter otherwise
    with contextlib.suppress(ImportError):
        from semlayout.train.export import export_generator as exporter
    out: dict[str, Path] = {}
    onnx_log = logging.getLogger("torch.onnx")
    with _EXPORT_LOCK:  # two loads in one process must not write the same temporary file
        level = onnx_log.level
        onnx_log.setLevel(logging.ERROR)  # the exporter logs "torchvision is not installed" lines
        try:
            for d in DIRECTIONS:
                p = target / f"{d}.onnx"
                if not p.is_file():
                    # the generators already loaded: no second load of the checkpoint, no
                    # discriminators
                    exporter(nets[NET_FOR_DIRECTION[d]], p, size)
                out[d] = p
        finally:
            onnx_log.setLevel(level)
    return out


def load_generators(path: Path, device: Any = "cpu") -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(config, {"G_A", "G_B"} in eval mode, meta) from a checkpoint folder.

    Only the generators are built and loaded: inference never needs the
    discriminators, so a checkpoint whose D differs from today's code still serves.
    """
    from safetensors import safe_open

    from semlayout.config import config_from_dict
    from semlayout.train.checkpoint import (
        CONFIG_FILE,
        WEIGHTS_FILE,
        build_generator,
        load_state_into,
        read_checkpoint_meta,
    )

    meta = read_checkpoint_meta(path)
    cfg = config_from_dict(meta.get("config", {}), source=str(path / CONFIG_FILE))
    weights = path / WEIGHTS_FILE
    nets: dict[str, Any] = {}
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            for name in NET_FOR_DIRECTION.values():
                state = {
                    k[len(name) + 1 :]: f.get_tensor(k) for k in keys if k.startswith(name + ".")
                }
                broken = [
                    k
                    for k, t in state.items()
                    if t.is_floating_point() and not bool(t.isfinite().all())
                ]
                if broken:  # would translate every image to black, silently
                    raise SemlayoutError(
                        f"{weights}: {name} has non-finite (NaN/inf) weights in {len(broken)} "
                        f"tensor(s), e.g. {name}.{broken[0]}; this checkpoint cannot serve"
                    )
                net = build_generator(cfg, name)
                load_state_into(net, name, state, str(weights))
                nets[name] = net.to(device).eval()
    except SemlayoutError:
        raise
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise SemlayoutError(f"{weights} is not a readable safetensors file: {err}") from None
    info = {k: v for k, v in meta.items() if k != "config"}
    return cfg, nets, info


def eager_runner(net: Any, device: Any, dtype: Any) -> Runner:
    import torch

    # channels_last lets oneDNN pick its blocked convolution kernels: the same numbers (max
    # difference ~1e-8) 1.9-3.5x faster at batch 1 on the CPU (`python -m bench train`)
    cl = torch.channels_last
    net.eval().to(dtype=dtype, memory_format=cl)
    conditioned = is_conditioned(net)

    def run(batch: np.ndarray, polarity: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(device, dtype).contiguous(memory_format=cl)
            pol = torch.from_numpy(polarity).to(device, dtype) if conditioned else None
            return np.ascontiguousarray(net(x, pol).float().cpu().numpy())

    return run


def onnx_runner(path: Path, num_threads: int | None) -> Runner:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if num_threads is not None:
        opts.intra_op_num_threads = max(1, int(num_threads))
    try:
        sess = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # onnxruntime raises its own error types for a corrupt model
        raise SemlayoutError(f"{path}: not a loadable ONNX model: {err}") from None
    names = [i.name for i in sess.get_inputs()]

    def run(batch: np.ndarray, polarity: np.ndarray) -> np.ndarray:
        feed = {names[0]: batch}
        if len(names) > 1:
            feed[names[1]] = polarity.astype(np.float32)
        return np.asarray(sess.run(None, feed)[0], dtype=np.float32)

    return run


def profile_views(
    cfg: Any, nets: dict[str, Any], profile: str | None
) -> tuple[dict[str, Any], str | None]:
    """The generators answering for `profile` (views sharing the weights) and the profile used:
    None (the shared network) when no label is given or the model never learned it."""
    from semlayout.models.unet import ProfileView
    from semlayout.profiles import NONE, profile_index

    row = profile_index(list(cfg.generator.profiles), profile)
    if row == NONE:
        return nets, None
    return {name: ProfileView(net, row).eval() for name, net in nets.items()}, profile
