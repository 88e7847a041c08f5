"""Translate images with a trained checkpoint: eager PyTorch (fp32 or bf16) or ONNX Runtime.

```python
tr = Translator.load("runs/x/final")                       # or "models:/semlayout@champion"
layouts = tr.translate("sem2layout", [sem_u8, ...], binarize=True)
```
Per image: (H, W) uint8 -> cv2 INTER_AREA resize to the model's square size S ->
[-1, 1] (`x / 127.5 - 1`) -> batched generator forward (eval mode, no autograd) ->
Tanh output resized back to (H, W) with INTER_LINEAR -> uint8 (or, with `binarize=True`,
the drawn layout in {0, 255}: threshold, then the Manhattan fit of `semlayout.layout_fit`,
as the checkpoint's `layout_fit` config says). Directions:
`sem2layout` = G_A, `layout2sem` = G_B.

ONNX: uses `CKPT/<direction>.onnx` when present. Otherwise it exports: into the
checkpoint folder itself when that folder was given locally, and into a cache
folder (keyed by the weights' hash) when it came from the registry, so a
downloaded artifact folder is never modified.

Thread safety: `translate` keeps no per-call state on the object, eager forwards
run in eval mode under `torch.inference_mode()`, and ONNX Runtime sessions
allow concurrent `run` calls, so one Translator serves a thread pool. Pass
`num_threads` to bound intra-op threads (the server shares few cores between
concurrent requests; the default leaves torch / ORT at their defaults).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semlayout.directions import DIRECTIONS, Direction
from semlayout.errors import SemlayoutError

# eager: fp32 PyTorch (channels_last); bf16: the same with bfloat16 weights and activations
# (outputs within ~1e-3 of fp32, i.e. under a grey level; several times faster where the CPU
# has bf16 units such as AMX, slower where it emulates them); onnx: ONNX Runtime, fp32
BACKENDS = ("eager", "bf16", "onnx")
NET_FOR_DIRECTION = {d: d.generator for d in DIRECTIONS}

_EXPORT_LOCK = threading.Lock()

# (B, 1, S, S) float32 in [-1, 1] -> (B, 1, S, S) float32 in [-1, 1]
Runner = Callable[[np.ndarray], np.ndarray]


def check_images(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Refuse an empty list and anything that is not a non-empty (H, W) uint8 array."""
    if isinstance(images, np.ndarray):
        raise SemlayoutError("images must be a list of (H, W) uint8 arrays, got a single array")
    images = list(images)
    if not images:
        raise SemlayoutError(
            "no images to translate: expected a non-empty list of (H, W) uint8 arrays"
        )
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray):
            raise SemlayoutError(f"image {i}: expected a numpy array, got {type(img).__name__}")
        if img.dtype != np.uint8:
            raise SemlayoutError(
                f"image {i}: expected dtype uint8 (8-bit grayscale), got {img.dtype}"
            )
        if img.ndim != 2:
            raise SemlayoutError(
                f"image {i}: expected an (H, W) grayscale array, got shape {img.shape}"
            )
        if img.shape[0] < 1 or img.shape[1] < 1:
            raise SemlayoutError(f"image {i}: empty image of shape {img.shape}")
    return images


def resolve_model_path(
    model: str | os.PathLike[str], tracking_uri: str | None = None
) -> tuple[Path, bool]:
    """(local checkpoint folder, came_from_registry). `models:/...` goes through the registry."""
    from semlayout.model_uri import ModelUri

    if ModelUri.is_model_uri(model):
        from semlayout.registry import Registry  # lazy: mlflow is heavy

        return Registry.local_checkpoint(model, tracking_uri), True
    return Path(model), False


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


def export_generator_onnx(net: Any, dest: Path, image_size: int) -> Path:
    """Export one generator to ONNX with a dynamic batch axis, atomically (temp file + rename)."""
    import torch

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    example = torch.zeros(2, 1, image_size, image_size)
    net = net.eval()
    try:
        with warnings.catch_warnings():
            # the tracer warns about Python-side shape checks; ONNX is checked against eager in
            # tests
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (example,),
                str(tmp),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                opset_version=18,
                dynamo=False,
            )
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _onnx_files(
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


class Translator:
    """A loaded model that translates uint8 images in either direction (see module docstring)."""

    def __init__(
        self,
        runners: dict[str, Runner],
        config: Any,
        image_size: int,
        source: str,
        backend: str,
        info: dict[str, Any] | None = None,
    ):
        self._runners = runners
        self.config = config
        self.image_size = int(image_size)
        self.source = source
        self.backend = backend
        self.info: dict[str, Any] = dict(info or {})

    # ------------------------------------------------------------ construction
    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str],
        backend: str = "eager",
        tracking_uri: str | None = None,
        device: str = "cpu",
        num_threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> Translator:
        """Load a checkpoint folder or a `models:/NAME@ALIAS` / `models:/NAME/VERSION` URI."""
        if backend not in BACKENDS:
            raise SemlayoutError(
                f"unknown backend '{backend}': expected one of {', '.join(BACKENDS)}"
            )
        import torch

        if num_threads is not None:
            torch.set_num_threads(max(1, int(num_threads)))
        ckpt, registry = resolve_model_path(model, tracking_uri)
        dev = torch.device(device)
        cfg, nets, meta = load_generators(ckpt, dev)
        size = cfg.generator.image_size
        info = {
            "source": str(model),
            "path": str(ckpt),
            "backend": backend,
            "image_size": size,
            "name": cfg.name,
            "step": meta.get("step"),
            "epoch": meta.get("epoch"),
            "created": meta.get("created"),
            "from_registry": registry,
        }
        if backend in ("eager", "bf16"):
            dtype = torch.bfloat16 if backend == "bf16" else torch.float32
            runners: dict[str, Runner] = {
                d: _eager_runner(nets[NET_FOR_DIRECTION[d]], dev, dtype) for d in DIRECTIONS
            }
        else:
            if dev.type != "cpu":
                raise SemlayoutError(f"the onnx backend runs on cpu here, got device '{device}'")
            files = _onnx_files(ckpt, registry, Path(cache_dir) if cache_dir else None, nets, size)
            runners = {d: _onnx_runner(files[d], num_threads) for d in DIRECTIONS}
            info["onnx"] = {d: str(p) for d, p in files.items()}
        return cls(runners, cfg, size, str(model), backend, info)

    # ------------------------------------------------------------ inference
    def run_batch(self, direction: str, batch: np.ndarray) -> np.ndarray:
        """Raw network call: (B, 1, S, S) float32 in [-1, 1] -> (B, 1, S, S) float32 in [-1, 1]."""
        Direction.parse(direction)
        s = self.image_size
        if batch.ndim != 4 or batch.shape[1:] != (1, s, s):
            raise SemlayoutError(f"expected a (B, 1, {s}, {s}) batch, got shape {batch.shape}")
        return self._runners[direction](np.ascontiguousarray(batch, dtype=np.float32))

    def preprocess(self, img: np.ndarray) -> np.ndarray:
        """(H, W) uint8 -> (S, S) float32 in [-1, 1]."""
        import cv2

        s = self.image_size
        if img.shape != (s, s):
            img = cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)
        return img.astype(np.float32) / np.float32(127.5) - np.float32(1.0)

    @staticmethod
    def postprocess(out: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """(S, S) float32 in [-1, 1] -> (H, W) uint8."""
        import cv2

        if out.shape != shape:
            out = cv2.resize(out, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        return np.clip(np.rint((out + 1.0) * 127.5), 0, 255).astype(np.uint8)

    def to_layout(self, grey: np.ndarray) -> np.ndarray:
        """A sem2layout output (H, W) uint8 -> binary layout {0, 255}, by the checkpoint's
        `layout_fit` config (threshold, then Manhattan fit: `semlayout.layout_fit`)."""
        from semlayout.layout_fit import fit_layout

        fit = self.config.layout_fit
        return fit_layout(grey, fit.method, fit.threshold, fit.min_iou)

    def translate(
        self,
        direction: str,
        images: Sequence[np.ndarray],
        binarize: bool = False,
        batch_size: int = 16,
    ) -> list[np.ndarray]:
        """Translate (H, W) uint8 images; each output has the size of its input.

        `binarize` (sem2layout only) returns layouts with values {0, 255} (`to_layout`).
        """
        Direction.parse(direction)
        images = check_images(images)
        if binarize and direction != "sem2layout":
            raise SemlayoutError(
                "binarize applies to sem2layout only (layouts are binary, SEMs are not)"
            )
        out: list[np.ndarray] = []
        for start in range(0, len(images), max(1, batch_size)):
            chunk = images[start : start + batch_size]
            batch = np.stack([self.preprocess(im) for im in chunk])[:, None]  # (B, 1, S, S)
            pred = self.run_batch(direction, batch)[:, 0]  # (B, S, S)
            grey = [self.postprocess(p, im.shape) for p, im in zip(pred, chunk, strict=True)]
            out.extend([self.to_layout(g) for g in grey] if binarize else grey)
        return out


def _eager_runner(net: Any, device: Any, dtype: Any) -> Runner:
    import torch

    # channels_last lets oneDNN pick its blocked convolution kernels: the same numbers (max
    # difference ~1e-8) 1.9-3.5x faster at batch 1 on the CPU (`python -m bench train`)
    cl = torch.channels_last
    net.eval().to(dtype=dtype, memory_format=cl)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(device, dtype).contiguous(memory_format=cl)
            return np.ascontiguousarray(net(x).float().cpu().numpy())

    return run


def _onnx_runner(path: Path, num_threads: int | None) -> Runner:
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
    name = sess.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run(None, {name: batch})[0], dtype=np.float32)

    return run
