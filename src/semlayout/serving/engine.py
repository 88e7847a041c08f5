"""InferenceEngine: the served model (both generators via `semlayout.inference.Translator`).

Path of one image: decode and grayscale check (`serving.uploads`) -> the Translator
(resize to the model's size with INTER_AREA, [-1, 1], forward, back to the input's size
as uint8). The API turns a sem2layout output into the drawn layout (`binarize=true`) with
the model's own `Translator.to_layout`, after the batch.

The engine holds one `LoadedModel` at a time: the weights and the drift detectors that judge
its requests (the reference registered with the version, or the `--reference` override).
`reload()` loads the version the registry alias points to *beside* the current one, with its
drift reference, and then swaps a single reference, so requests already running finish on the
model they started with and no request sees a half-loaded model or another version's
reference. A model given as `models:/NAME@ALIAS` is pinned to the version the alias named
at load time (loaded as `models:/NAME/VERSION`), which is what `X-Model-Version` reports.

Every image carries the polarity asked for (auto | bright | dark, `semlayout.polarity`) and
its layer's word (`polarity_layer.LayerPrior`: configured polarity, pooled evidence; auto's
prior); a result says which polarity was used (`PolarityDecision`).
The micro-batcher that feeds it is `semlayout.serving.batcher`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from semlayout.confidence_calibration import Calibration, load_calibration
from semlayout.directions import DIRECTIONS
from semlayout.errors import SemlayoutError
from semlayout.model_uri import ModelUri
from semlayout.monitoring.drift import DriftDetector, DriftOptions
from semlayout.tiling import MAX_FIELD_SIDE

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from semlayout.inference import Translation
    from semlayout.polarity_auto import PolarityDecision
    from semlayout.polarity_layer import LayerPrior
    from semlayout.registry import Registry

    Prior = int | LayerPrior | None  # the layer's word: configured polarity, pooled evidence

log = logging.getLogger("semlayout.serving")


class Translates(Protocol):
    image_size: int

    @property
    def polarities(self) -> tuple[int, ...]: ...

    def translate_detailed(
        self,
        direction: str,
        images: Sequence[np.ndarray],
        *,
        polarity: str,
        prior: Prior,
        max_field_side: int,
    ) -> list[Translation]: ...

    def fixed_polarity(
        self, direction: str, polarity: str | int | None, prior: Prior = None
    ) -> PolarityDecision | None: ...

    def to_layout(self, grey: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class LoadedModel:
    translator: Translates
    version: str
    source: str
    backend: str
    loaded_at: float = field(default_factory=time.time)
    baseline_ssim: dict[str, float] = field(default_factory=dict)
    # the drift reference registered with this version (a folder), if it came with one
    drift_reference: Path | None = None
    # the detectors this model's requests are judged by, and where their reference came from
    detectors: dict[str, DriftDetector] = field(default_factory=dict)
    drift_source: str | None = None
    # the confidence calibration saved beside the weights (None: confidence unknown)
    calibration: Calibration | None = None
    # {tool / layer profile: a translator answering for it}, sharing `translator`'s weights
    # (`semlayout.inference_profiles`); {} when the model learned none or the backend cannot
    # serve them (`profile_note` says why)
    profiles: dict[str, Translates] = field(default_factory=dict)
    profile_note: str | None = None

    def profile_for(self, label: str | None) -> str | None:
        """The profile that answers a request labelled `label`: the label when this model
        serves it, else None (the shared network)."""
        return label if label is not None and label in self.profiles else None

    def translator_for(self, profile: str | None) -> Translates:
        """The translator of `profile` (`profile_for`'s answer; None: the shared network)."""
        return self.translator if profile is None else self.profiles[profile]


def registry_ref(uri: str) -> ModelUri | None:
    """`uri` as a registry model (`models:/NAME@ALIAS`, `models:/NAME/VERSION`), else None."""
    if not ModelUri.is_model_uri(uri):
        return None
    try:
        return ModelUri.parse(uri)
    except SemlayoutError:
        return None


def parse_alias(uri: str) -> tuple[str, str] | None:
    ref = registry_ref(uri)
    return (ref.name, ref.alias) if ref is not None and ref.alias else None


def _local_version(folder: Path) -> str:
    """A short content id of a checkpoint folder: config.json plus the weights' first 1 MB."""
    h = hashlib.sha256()
    for name in ("config.json", "weights.safetensors"):
        f = folder / name
        if f.is_file():
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
            h.update(str(f.stat().st_size).encode())
    return f"local-{h.hexdigest()[:10]}"


def _registry_baseline(client: Any, run_id: str | None) -> dict[str, float]:
    """Promotion SSIM per direction from the version's training run, when it logged one."""
    if not run_id:
        return {}
    try:
        metrics = client.get_run(run_id).data.metrics
    except Exception:  # noqa: BLE001 - a missing run only means "no baseline"
        return {}
    out: dict[str, float] = {}
    for d in DIRECTIONS:
        for key in (f"{d}.ssim", f"{d}_ssim", f"{d}/ssim", f"test.{d}.ssim", f"test_{d}_ssim"):
            if key in metrics:
                out[d] = float(metrics[key])
                break
    return out


def alias_version(uri: str, tracking_uri: str | None) -> str:
    """The version number `models:/NAME@ALIAS` points to now."""
    ref = registry_ref(uri)
    if ref is None or ref.alias is None:
        raise SemlayoutError(f"'{uri}' is not a models:/NAME@ALIAS URI")
    return str(_registry_version(uri, ref, tracking_uri)[1].version)


def _registry_version(
    uri: str, ref: ModelUri, tracking_uri: str | None
) -> tuple[Registry, ModelVersion]:
    """(the registry, the version `ref` names now); any failure is one line naming `uri`."""
    from mlflow.exceptions import MlflowException

    from semlayout.registry import Registry

    try:
        registry = Registry(tracking_uri)
        return registry, registry.lookup(ref)
    except (SemlayoutError, MlflowException) as err:
        raise SemlayoutError(f"cannot resolve {uri}: {str(err).splitlines()[0]}") from None


def load_model(model: str, backend: str = "eager", tracking_uri: str | None = None) -> LoadedModel:
    """Load a checkpoint folder or registry URI into a `LoadedModel` (pinning aliases to a
    version), with its tool / layer profiles (`serving.profile_loading.with_profiles`)."""
    from semlayout.inference import Translator
    from semlayout.serving.profile_loading import with_profiles

    if not model:
        raise SemlayoutError(
            "no model given: pass --model (checkpoint folder or models:/NAME@ALIAS)"
        )
    ref = registry_ref(model)
    if ref is not None:
        from semlayout.registry.model_cache import drift_reference_of

        registry, mv = _registry_version(model, ref, tracking_uri)
        pinned = ref.pinned(mv.version)
        ckpt = registry.fetch(pinned)  # downloaded once: Translator.load finds it in the cache
        translator = Translator.load(str(pinned), backend=backend, tracking_uri=tracking_uri)
        loaded = LoadedModel(
            translator,
            str(mv.version),
            str(pinned),
            translator.backend,  # what "auto" chose
            baseline_ssim=_registry_baseline(registry.client, mv.run_id),
            drift_reference=drift_reference_of(ckpt),
            calibration=load_calibration(ckpt),
        )
        return with_profiles(loaded)
    folder = Path(model)
    if not folder.is_dir():
        raise SemlayoutError(
            f"model not found: '{model}' (expected a checkpoint folder or models:/NAME@ALIAS)"
        )
    translator = Translator.load(folder, backend=backend)
    loaded = LoadedModel(
        translator,
        _local_version(folder),
        str(folder),
        translator.backend,  # what "auto" chose
        calibration=load_calibration(folder),
    )
    return with_profiles(loaded)


@dataclass(frozen=True)
class TranslateResult:
    outputs: list[np.ndarray]
    model: LoadedModel
    forward_ms: float
    decisions: list[PolarityDecision]
    profile: str | None = None  # the tool / layer profile that answered (None: shared network)
    raws: list[np.ndarray | None] | None = None  # the network's own outputs (`Translation.raw`)


class InferenceEngine:
    def __init__(
        self,
        loaded: LoadedModel,
        model: str | None = None,
        backend: str = "eager",
        tracking_uri: str | None = None,
        loader: Callable[[str, str, str | None], LoadedModel] = load_model,
        drift: DriftOptions | None = None,
        max_field_side: int = MAX_FIELD_SIDE,
    ):
        self.model = model if model is not None else loaded.source
        self.max_field_side = max_field_side
        self.backend = backend
        self.tracking_uri = tracking_uri
        self.drift = drift or DriftOptions()
        self._override: dict[str, DriftDetector] | None = None
        self._loader = loader
        self._reload_lock = threading.Lock()
        self._current = self._with_drift(loaded)

    @classmethod
    def load(
        cls,
        model: str,
        backend: str = "eager",
        tracking_uri: str | None = None,
        drift: DriftOptions | None = None,
        max_field_side: int = MAX_FIELD_SIDE,
    ) -> InferenceEngine:
        loaded = load_model(model, backend, tracking_uri)
        return cls(loaded, model, backend, tracking_uri, drift=drift, max_field_side=max_field_side)

    def _with_drift(self, loaded: LoadedModel) -> LoadedModel:
        """`loaded` with its drift detectors: from the `--reference` override (built once), else
        from the reference registered with the version, else none (and a warning)."""
        if self.drift.override is not None:
            if self._override is None:
                self._override = self.drift.detectors(self.drift.override)
            source = f"override {self.drift.override}"
            return replace(loaded, detectors=self._override, drift_source=source)
        if loaded.drift_reference is not None:
            source = f"registered with {loaded.source}"
            detectors = self.drift.detectors(loaded.drift_reference)
            return replace(loaded, detectors=detectors, drift_source=source)
        log.warning(
            "model %s (version %s) carries no drift reference and no --reference was given: "
            "drift checks are off",
            loaded.source,
            loaded.version,
        )
        return replace(loaded, detectors={}, drift_source=None)

    @property
    def current(self) -> LoadedModel:
        return self._current

    @property
    def follows_alias(self) -> bool:
        return parse_alias(self.model) is not None

    def translate(
        self,
        direction: str,
        images: list[np.ndarray],
        polarity: str = "auto",
        prior: Prior = None,
        profile: str | None = None,
    ) -> TranslateResult:
        """Translate a batch on the model current at call time (a swap meanwhile does not
        affect it), in `polarity` (auto | bright | dark; `prior`: the layer's polarity), with
        the tool / layer `profile` when that model serves it (else the shared network)."""
        if direction not in DIRECTIONS:
            raise SemlayoutError(
                f"unknown direction '{direction}'; expected one of {', '.join(DIRECTIONS)}"
            )
        loaded = self._current
        used = loaded.profile_for(profile)
        t0 = time.perf_counter()
        done = loaded.translator_for(used).translate_detailed(
            direction,
            list(images),
            polarity=polarity,
            prior=prior,
            max_field_side=self.max_field_side,
        )
        forward_ms = (time.perf_counter() - t0) * 1000
        return TranslateResult(
            [t.output for t in done],
            loaded,
            forward_ms,
            [t.decision for t in done],
            used,
            [t.raw for t in done],
        )

    def reload(self, force: bool = False) -> dict[str, Any]:
        """Load what `self.model` names now; swap if the version changed (or `force`)."""
        with self._reload_lock:
            old = self._current
            if self.follows_alias and not force:
                target = alias_version(self.model, self.tracking_uri)
                if target == old.version:
                    return {
                        "changed": False,
                        "old_version": old.version,
                        "new_version": old.version,
                        "source": old.source,
                    }
            new = self._loader(self.model, self.backend, self.tracking_uri)
            changed = new.version != old.version or force
            if changed:
                # weights and drift detectors are swapped together, in one reference swap;
                # running requests keep `old`
                self._current = self._with_drift(new)
                log.info("model swapped: %s -> %s (%s)", old.version, new.version, new.source)
            return {
                "changed": changed,
                "old_version": old.version,
                "new_version": new.version,
                "source": new.source,
            }
