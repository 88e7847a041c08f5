"""Translate images with a trained checkpoint: eager PyTorch (fp32 or bf16) or ONNX Runtime.

```python
tr = Translator.load("runs/x/final")                       # or "models:/semlayout@champion"
layouts = tr.translate("sem2layout", [sem_u8, ...], binarize=True)            # polarity="auto"
done = tr.translate_detailed("sem2layout", [sem_u8], polarity="dark")  # [Translation]
```
Per image: (H, W) uint8 -> cv2 INTER_AREA resize to the model's square size S ->
[-1, 1] (`x / 127.5 - 1`) -> batched generator forward (eval mode, no autograd) ->
Tanh output resized back to (H, W) with INTER_LINEAR -> uint8 (or, with `binarize=True`,
the drawn layout in {0, 255}: threshold, then the Manhattan fit of `semlayout.layout_fit`,
as the checkpoint's `layout_fit` config says). Directions:
`sem2layout` = G_A, `layout2sem` = G_B.

Polarity (`semlayout.polarity`): every call takes `polarity` = auto | bright | dark (or +-1)
and an optional layer `prior`: its configured polarity (+1 / -1) or a
`semlayout.polarity_layer.LayerPrior` (configured and pooled evidence). A model serves the
polarities it learned (`config.polarity.serves`; a checkpoint made before polarity was
recorded serves +1 only); asking it for another is a `SemlayoutError` naming what it learned,
never an inverted answer. `auto`: sem2layout decides per image (`semlayout.polarity_auto`,
analysis by synthesis plus the layer's pooled evidence; a configured layer polarity decides);
layout2sem renders in the layer's polarity, else bright; a model that serves one polarity
answers in it. Each `Translation` says which polarity was used, how
it was chosen and, for auto, the margin.

Backends (eager, bf16, ONNX Runtime) are `semlayout.inference_backends`.

Thread safety: `translate` keeps no per-call state on the object, eager forwards
run in eval mode under `torch.inference_mode()`, and ONNX Runtime sessions
allow concurrent `run` calls, so one Translator serves a thread pool. Pass
`num_threads` to bound intra-op threads (the server shares few cores between
concurrent requests; the default leaves torch / ORT at their defaults).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semlayout.directions import DIRECTIONS, Direction
from semlayout.errors import SemlayoutError
from semlayout.inference_backends import (
    NET_FOR_DIRECTION,
    Runner,
    eager_runner,
    load_generators,
    onnx_files,
    onnx_runner,
    profile_views,
)
from semlayout.polarity import BRIGHT, PolarityChoice, check_polarity, name_of, parse_choice
from semlayout.polarity_auto import PolarityDecision, auto_sem2layout, choose, evidence, hypotheses
from semlayout.polarity_layer import LayerPrior
from semlayout.tiling import (
    MAX_FIELD_SIDE,
    check_field,
    field_reading,
    is_field,
    translate_field,
    translator_forward,
)

# eager: fp32 PyTorch (channels_last); bf16: the same with bfloat16 weights and activations
# (outputs within ~1e-3 of fp32, i.e. under a grey level; several times faster where the CPU
# has bf16 units such as AMX, slower where it emulates them); onnx: ONNX Runtime, fp32
# auto: the fastest of them whose outputs match eager fp32, measured at load
# (`semlayout.backend_probe`)
BACKENDS = ("eager", "bf16", "onnx", "auto")


@dataclass(frozen=True)
class Translation:
    """One translated image and the polarity it was translated in."""

    output: np.ndarray  # (H, W) uint8, the input's size ({0, 255} when binarized)
    decision: PolarityDecision
    # the network's own output for a window (S, S) float32 in [-1, 1], before resizing back
    # (None for a field): what a later reading of the same pass can reuse
    raw: np.ndarray | None = None


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
        # eager / bf16: (generators, device, dtype), for profile views sharing the weights
        self.eager: tuple[dict[str, Any], Any, Any] | None = None
        self._pool = threading.local()  # each thread's reusable input batch (`input_batch`)

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
        profile: str | None = None,
    ) -> Translator:
        """Load a checkpoint folder or a `models:/NAME@ALIAS` / `models:/NAME/VERSION` URI.

        `profile` (a tool / layer label, `semlayout.profiles`) selects that profile's
        conditioning when the model learned it; otherwise the shared network answers
        (`info["profile"]` says which: the label, or None)."""
        if backend not in BACKENDS:
            raise SemlayoutError(
                f"unknown backend '{backend}': expected one of {', '.join(BACKENDS)}"
            )
        if backend == "auto":
            return cls._load_fastest(model, tracking_uri, device, num_threads, cache_dir, profile)
        import torch

        if num_threads is not None:
            torch.set_num_threads(max(1, int(num_threads)))
        ckpt, registry = resolve_model_path(model, tracking_uri)
        dev = torch.device(device)
        cfg, shared, meta = load_generators(ckpt, dev)
        nets, used_profile = profile_views(cfg, shared, profile)
        if used_profile is not None and backend == "onnx":
            raise SemlayoutError(
                f"profile {used_profile!r}: the onnx backend serves the shared network only; "
                "use the eager backend for a tool / layer profile"
            )
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
            "polarities": list(cfg.polarity.serves),
            "polarity_conditioning": cfg.generator.polarity_conditioning,
            "profiles": list(cfg.generator.profiles),
            "profile": used_profile,
        }
        if backend in ("eager", "bf16"):
            dtype = torch.bfloat16 if backend == "bf16" else torch.float32
            runners: dict[str, Runner] = {
                d: eager_runner(nets[NET_FOR_DIRECTION[d]], dev, dtype) for d in DIRECTIONS
            }
            tr = cls(runners, cfg, size, str(model), backend, info)
            tr.eager = (shared, dev, dtype)
            return tr
        if dev.type != "cpu":
            raise SemlayoutError(f"the onnx backend runs on cpu here, got device '{device}'")
        files = onnx_files(ckpt, registry, Path(cache_dir) if cache_dir else None, nets, size)
        runners = {d: onnx_runner(files[d], num_threads) for d in DIRECTIONS}
        info["onnx"] = {d: str(p) for d, p in files.items()}
        return cls(runners, cfg, size, str(model), backend, info)

    @classmethod
    def _load_fastest(
        cls,
        model: str | os.PathLike[str],
        tracking_uri: str | None,
        device: str,
        num_threads: int | None,
        cache_dir: str | os.PathLike[str] | None,
        profile: str | None,
    ) -> Translator:
        """backend="auto": every candidate loaded, probed and timed; the winner returned with
        the probe's report in `info["backend_probe"]` (onnx is no candidate for a profile or
        a model that learned profiles: it serves the shared network only)."""
        from semlayout.backend_probe import candidates, choose
        from semlayout.inference_profiles import learned_profiles

        names = candidates() if device == "cpu" else ["eager"]
        if profile is not None or learned_profiles(model, tracking_uri):
            names = [b for b in names if b != "onnx"]
        loaded = {
            b: cls.load(model, b, tracking_uri, device, num_threads, cache_dir, profile)
            for b in names
        }
        chosen, report = choose(loaded)
        tr = loaded[chosen]
        tr.info["backend_probe"] = {"chosen": chosen, "candidates": report}
        return tr

    # ------------------------------------------------------------ polarity
    @property
    def polarities(self) -> tuple[int, ...]:
        """The contrast polarities this model serves (+1 bright, -1 dark)."""
        return tuple(self.config.polarity.serves)

    def check_served(self, polarity: int, why: str = "asked for") -> None:
        """A `SemlayoutError` unless the model learned `polarity`."""
        if polarity not in self.polarities:
            learned = " and ".join(f"{name_of(p)} ({p:+d})" for p in self.polarities)
            raise SemlayoutError(
                f"polarity {name_of(polarity)} ({polarity:+d}) {why}, but this model learned "
                f"{learned} contrast only: it would return an inverted layout; use a model "
                f"trained on {name_of(polarity)} pairs"
            )

    def fixed_polarity(
        self, direction: str, polarity: str | int | None, prior: int | LayerPrior | None = None
    ) -> PolarityDecision | None:
        """The decision when no image is needed to make it; None when sem2layout must decide
        per image (auto on a model that serves both polarities; a configured layer polarity
        decides too, but the image's evidence is still read, for the layer and drift)."""
        choice = parse_choice(polarity)
        layer = LayerPrior.of(prior)
        if layer.configured is not None:
            check_polarity(layer.configured, "layer polarity")
            self.check_served(layer.configured, "is the layer's")
        if choice is not PolarityChoice.auto:
            fixed = choice.value_or_none
            assert fixed is not None
            self.check_served(fixed)
            return PolarityDecision(fixed, "given")
        if len(self.polarities) == 1:
            return PolarityDecision(self.polarities[0], "only")
        if direction == Direction.layout2sem:  # nothing in a layout says how it will image
            if layer.configured is not None:
                return PolarityDecision(layer.configured, "layer")
            if layer.n > 0 and layer.pooled != 0:
                implied = BRIGHT if layer.pooled > 0 else -BRIGHT
                return PolarityDecision(implied, "pooled", abs(layer.pooled))
            return PolarityDecision(BRIGHT, "given")
        return None

    # ------------------------------------------------------------ inference
    def run_batch(
        self, direction: str, batch: np.ndarray, polarity: np.ndarray | int | None = None
    ) -> np.ndarray:
        """Raw network call: (B, 1, S, S) float32 in [-1, 1] and the polarity (one +-1 for the
        batch, or (B,); None: +1) -> (B, 1, S, S) float32 in [-1, 1]."""
        Direction.parse(direction)
        s = self.image_size
        if batch.ndim != 4 or batch.shape[1:] != (1, s, s):
            raise SemlayoutError(f"expected a (B, 1, {s}, {s}) batch, got shape {batch.shape}")
        pol = np.array(  # a writable copy: torch.from_numpy warns on read-only views
            np.broadcast_to(np.asarray(BRIGHT if polarity is None else polarity), (len(batch),)),
            dtype=np.float32,
        )
        return self._runners[direction](np.ascontiguousarray(batch, dtype=np.float32), pol)

    def preprocess(self, img: np.ndarray) -> np.ndarray:
        """(H, W) uint8 -> (S, S) float32 in [-1, 1]."""
        import cv2

        s = self.image_size
        if img.shape != (s, s):
            img = cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)
        return img.astype(np.float32) / np.float32(127.5) - np.float32(1.0)

    def input_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(B, 1, S, S) float32 in [-1, 1] of `images` (each as `preprocess` makes it), written
        into this thread's reusable buffer: a request allocates no input batch. Valid until
        this thread's next call (every forward here is synchronous)."""
        import cv2

        s, n = self.image_size, len(images)
        buf = getattr(self._pool, "buf", None)
        if buf is None or len(buf) < n:
            buf = self._pool.buf = np.empty((max(n, 8), 1, s, s), np.float32)
        out = buf[:n]
        for i, img in enumerate(images):
            if img.shape != (s, s):
                img = cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)
            np.divide(img, np.float32(127.5), out=out[i, 0], casting="unsafe")
            out[i, 0] -= np.float32(1.0)
        return out

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

    def read_evidence(self, images: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """Each SEM's own evidence of its polarity, log-odds of bright (N,): auto's reading
        (`polarity_auto`) without translating; a field's is its windows' mean
        (`tiling.field_reading`); needs a model of both polarities."""
        if len(self.polarities) < 2:
            raise SemlayoutError("this model learned one polarity: there is nothing to read")
        images = check_images(images)
        out = np.zeros(len(images), np.float64)
        singles = [i for i, im in enumerate(images) if not is_field(im.shape)]
        for start in range(0, len(singles), max(1, batch_size)):
            idx = singles[start : start + batch_size]
            batch = np.stack([self.preprocess(images[i]) for i in idx])[:, None]
            _, feats = hypotheses(self._runners["sem2layout"], self._runners["layout2sem"], batch)
            out[idx] = evidence(feats, self.config.polarity.auto_head)
        for i in sorted(set(range(len(images))) - set(singles)):
            out[i] = field_reading(self, images[i], batch_size)[0]
        return out

    def translate(
        self, direction: str, images: Sequence[np.ndarray], binarize: bool = False, **options: Any
    ) -> list[np.ndarray]:
        """Translate (H, W) uint8 images; each output has the size of its input.

        `binarize` (sem2layout only) returns layouts with values {0, 255} (`to_layout`);
        `options`: `translate_detailed`'s batch_size, polarity and prior (see the module
        docstring; `translate_detailed` also returns the polarity each image was translated in).
        """
        return [t.output for t in self.translate_detailed(direction, images, binarize, **options)]

    def translate_detailed(
        self,
        direction: str,
        images: Sequence[np.ndarray],
        binarize: bool = False,
        batch_size: int = 16,
        polarity: str | int | None = "auto",
        prior: int | LayerPrior | None = None,
        max_field_side: int = MAX_FIELD_SIDE,
    ) -> list[Translation]:
        """`translate`, with the polarity decision of every image. An image larger than one
        window (`semlayout.tiling.is_field`) is a field: translated by overlapping tiles at
        its own scale, up to `max_field_side` px a side (checked before any work)."""
        Direction.parse(direction)
        images = check_images(images)
        if binarize and direction != "sem2layout":
            raise SemlayoutError(
                "binarize applies to sem2layout only (layouts are binary, SEMs are not)"
            )
        fields = [i for i, im in enumerate(images) if is_field(im.shape)]
        for i in fields:
            check_field(images[i], max_field_side)
        fixed = self.fixed_polarity(direction, polarity, prior)
        out: dict[int, Translation] = {}
        singles = [i for i in range(len(images)) if i not in set(fields)]
        for start in range(0, len(singles), max(1, batch_size)):
            chunk = singles[start : start + batch_size]
            done = self._translate_windows(direction, [images[i] for i in chunk], fixed, prior)
            out.update(zip(chunk, done, strict=True))
        for i in fields:
            dec = fixed or self._field_polarity(images[i], prior, batch_size)
            forward = translator_forward(self, direction, dec.polarity)
            blended = translate_field(
                images[i], forward, batch_size=batch_size, max_side=max_field_side
            )
            out[i] = Translation(self.postprocess(blended, images[i].shape), dec)
        if binarize:
            out = {
                i: Translation(self.to_layout(t.output), t.decision, t.raw) for i, t in out.items()
            }
        return [out[i] for i in range(len(images))]

    def _translate_windows(
        self,
        direction: str,
        chunk: list[np.ndarray],
        fixed: PolarityDecision | None,
        prior: int | LayerPrior | None,
    ) -> list[Translation]:
        """One forward of whole images (each resized to the model's size and back)."""
        batch = self.input_batch(chunk)  # (B, 1, S, S)
        if fixed is not None:
            pred = self.run_batch(direction, batch, fixed.polarity)
            decisions = [fixed] * len(chunk)
        else:
            pred, decisions = auto_sem2layout(
                self._runners["sem2layout"],
                self._runners["layout2sem"],
                batch,
                prior,
                self.config.polarity.auto_head,
            )
        return [
            Translation(self.postprocess(p, im.shape), dec, p)
            for p, im, dec in zip(pred[:, 0], chunk, decisions, strict=True)
        ]

    def _field_polarity(
        self, img: np.ndarray, prior: int | LayerPrior | None, n: int
    ) -> PolarityDecision:
        """auto on a SEM field: one polarity for the whole field, from its windows' mean
        evidence (`tiling.field_reading`) with the layer's word, as for one image
        (`polarity_auto.choose`)."""
        e, cyc = field_reading(self, img, n)
        blank = np.zeros((1, 1, 1, 1), np.float32)  # choose picks outputs too: none here
        _, (decision,) = choose(
            {BRIGHT: blank, -BRIGHT: blank},
            np.array([e]),
            LayerPrior.of(prior),
            {p: np.array([c]) for p, c in cyc.items()},
        )
        return decision
