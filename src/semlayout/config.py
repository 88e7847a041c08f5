"""Typed experiment configuration: what the networks, losses and training loop need.

Configs are pydantic models with `extra="forbid"`, so a misspelt key is an
error naming the key. A config is saved as `config.json` beside every
checkpoint's weights; the checkpoint rebuilds its networks from it alone.
Loading a config has no side effects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from semlayout.errors import SemlayoutError, validation_error
from semlayout.layout_fit import FitMethod
from semlayout.polarity import DEFAULT_SYNTH_REVERSE_FRACTION, UNKNOWN_READS_AS
from semlayout.profiles import PROFILE_PATTERN


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class GeneratorConfig(_Strict):
    """U-Net generator. Channels at depth k: min(base_filters * 2**k, max_filters)."""

    image_size: int = Field(256, ge=16, description="square side the network sees (px)")
    in_channels: int = Field(1, ge=1)
    out_channels: int = Field(1, ge=1)
    base_filters: int = Field(64, ge=1)
    max_filters: int = Field(256, ge=1)
    n_down: int = Field(
        5, ge=1, description="down-sampling steps; bottleneck = image_size / 2**n_down"
    )
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    dropout_blocks: int = Field(3, ge=0, description="early decoder blocks that use dropout")
    norm: Literal["batch", "instance"] = "batch"
    attention: bool = False
    attention_resolutions: list[int] = Field(default_factory=lambda: [8, 16])
    polarity_conditioning: Literal["none", "channel", "film"] = Field(
        "none",
        description="how the generators are told the contrast polarity (+1 bright pattern, -1 "
        "dark): none (they are not: one polarity per model), channel (a constant +-1 input "
        "channel beside the image), film (a per-polarity scale and shift of every block's "
        "features)",
    )
    polarity_flip: bool = Field(
        False,
        description="with polarity conditioning: G_A multiplies its input SEM by the polarity "
        "and G_B its output SEM, so a reversed image reaches the network with the material "
        "contrast of a normal one and the conditioning learns what differs (the rims)",
    )
    profiles: list[Annotated[str, StringConstraints(pattern=PROFILE_PATTERN)]] = Field(
        default_factory=list,
        description="tool / layer profiles the generators are conditioned on: each has its own "
        "scale and shift of every block's features (zero = the shared network), learned by a "
        "fine-tune on that profile's reviewed pairs (docs/adaptation.md); an image without a "
        "profile runs the shared network",
    )
    profile_adapter_rank: int = Field(
        0,
        ge=0,
        le=64,
        description="with profiles: a per-profile residual low-rank 1x1 conv after every "
        "decoder block of both generators (x + U_p relu(D_p x), U_p zero at init: the shared "
        "network until trained), so a profile can re-learn a tool's rendering; 0 = none",
    )
    input_norm: Literal["none", "standardize"] = Field(
        "none",
        description="standardize: G_A (SEM -> layout) scales each input image to zero mean and "
        "unit standard deviation (times 0.5) before its first layer, so detector gain, offset and "
        "background do not have to be learned; G_B's binary layout input is never rescaled",
    )

    @model_validator(mode="after")
    def _depth_fits_size(self) -> GeneratorConfig:
        bottleneck = self.image_size / 2**self.n_down
        if bottleneck < 2 or bottleneck != int(bottleneck):
            raise ValueError(
                f"n_down={self.n_down} does not fit image_size={self.image_size}: the bottleneck "
                f"would be {bottleneck:g} px; it must be a whole number >= 2 "
                f"(e.g. n_down=5 gives 8x8 at 256 px)"
            )
        if self.attention:
            # decoder resolutions: the bottleneck up to half the image size
            valid = [self.image_size // 2**j for j in range(self.n_down, 0, -1)]
            bad = [r for r in self.attention_resolutions if r not in valid]
            if bad:
                raise ValueError(
                    f"attention_resolutions {bad} are not decoder resolutions for "
                    f"image_size={self.image_size}, n_down={self.n_down}; expected some of {valid}"
                )
        return self


class DiscriminatorConfig(_Strict):
    """Conditional PatchGAN: input is cat(source, output)."""

    in_channels: int = Field(2, ge=1)
    base_filters: int = Field(64, ge=1)
    n_layers: int = Field(3, ge=1, description="3 gives a 70x70 receptive field")
    spectral_norm: bool = True
    norm: Literal["batch", "instance", "none"] = "instance"


class LossConfig(_Strict):
    gan_mode: Literal["lsgan", "bce"] = "lsgan"
    lambda_l1: float = Field(100.0, ge=0)
    lambda_cycle: float = Field(10.0, ge=0)
    lambda_fm: float = Field(10.0, ge=0, description="feature matching; 0 disables it")
    lambda_identity: float = Field(0.0, ge=0)
    lambda_dice: float = Field(
        0.0, ge=0, description="soft Dice of G_A's layout vs the target; 0 disables it"
    )
    adversarial_weight_A: float = Field(
        1.0,
        ge=0,
        description="scales what D_A teaches G_A (gan_A and fm_A); 0 = L1 alone for SEM->Layout",
    )
    adversarial_weight_B: float = Field(
        1.0,
        ge=0,
        description="scales what D_B teaches G_B (gan_B and fm_B): below 1, Layout->SEM "
        "leans on L1 and predicts the expected SEM rather than imitating its shot noise",
    )
    real_label: float = Field(0.9, gt=0, le=1, description="label smoothing on real targets")
    lambda_distill: float = Field(
        0.0,
        ge=0,
        description="distillation: L1 of each student generator's output to the teacher's "
        "(train.teacher, eval mode, no grad) for the same input and polarity; 0 disables it",
    )


class TrainConfig(_Strict):
    epochs: int = Field(100, ge=1)
    decay_start_epoch: int = Field(50, ge=0, description="LR constant before, linear to 0 after")
    batch_size: int = Field(4, ge=1)
    lr: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    buffer_size: int = Field(50, ge=0, description="image pool for D; 0 disables it")
    balanced_sampling: bool = False
    augment: bool = True
    crop_size: int | None = Field(
        None,
        ge=8,
        description="train on random crops of this side at full image_size resolution "
        "(same crop for both images; validation and inference see the whole image); "
        "None = whole image",
    )
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints")
    log_every: int = Field(50, ge=1)
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    num_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 keeps torch's default")
    max_steps: int | None = Field(None, ge=1, description="stop early after this many steps")
    channels_last: bool = False
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32",
        description="fp32, or bf16: the G and D forwards of the training step run under "
        "bf16 autocast (losses, weights and optimiser state stay fp32); validation stays fp32; "
        "auto: bf16 where the device computes it natively (CUDA with bf16, a CPU with AMX or "
        "AVX512-BF16), else fp32",
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
        description="auto (cuda if available), cpu, cuda, cuda:N",
    )
    keep_checkpoints: int = Field(3, ge=1, description="step checkpoints kept in RUN/checkpoints")
    val_samples: int = Field(32, ge=0, description="val images scored after each epoch; 0 skips")
    sample_images: int = Field(4, ge=0, description="val images in the per-epoch sample grid")
    teacher: str | None = Field(
        None,
        description="distillation teacher: a checkpoint folder (config.json + "
        "weights.safetensors) whose generators the student's follow at loss.lambda_distill; "
        "same image size, channels, polarity conditioning and profiles; None = no teacher",
    )

    @model_validator(mode="after")
    def _decay_inside_run(self) -> TrainConfig:
        if self.decay_start_epoch > self.epochs:
            raise ValueError(
                f"decay_start_epoch={self.decay_start_epoch} is after epochs={self.epochs}"
            )
        return self


class LayoutFitConfig(_Strict):
    """How `sem2layout` output becomes a binary layout (`semlayout.layout_fit`)."""

    method: FitMethod = Field(
        "manhattan",
        description="manhattan: threshold, then rectangle-like components become their "
        "best-fit axis-parallel rectangle; threshold: the binarisation alone",
    )
    threshold: float = Field(
        0.5, gt=0.0, lt=1.0, description="foreground above this fraction of white"
    )
    min_iou: float = Field(
        0.75,
        ge=0.0,
        le=1.0,
        description="a component is replaced only if its rectangle covers it this well",
    )


class AutoHeadConfig(_Strict):
    """`polarity=auto`'s calibrated head (`semlayout.polarity_auto`): a logistic regression of
    bright-vs-dark on the analysis-by-synthesis features, fitted by training on its val split."""

    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float
    n: int = Field(..., description="images it was fitted on")
    accuracy: float = Field(..., description="its accuracy on them")


class PolarityConfig(_Strict):
    """Which contrast polarities a model serves (`semlayout.polarity`)."""

    learned: list[Literal[1, -1]] | None = Field(
        None,
        description="set by training: the polarities of its train split, which the model "
        "serves; None in a config file (and in checkpoints made before polarity was recorded, "
        "which serve +1 only)",
    )
    synth_reverse_fraction: float = Field(
        DEFAULT_SYNTH_REVERSE_FRACTION,
        ge=0.0,
        le=1.0,
        description="share of reversed-contrast (-1) pairs when the training pipeline "
        "synthesises its data",
    )
    auto_head: AutoHeadConfig | None = Field(
        None,
        description="set by training (a model of both polarities with a val split): "
        "polarity=auto's calibrated head; None: the raw evidence",
    )

    @property
    def serves(self) -> tuple[int, ...]:
        """The polarities the model answers for: `learned`, or (+1,) when none was recorded."""
        return tuple(self.learned) if self.learned else (UNKNOWN_READS_AS,)


class ExperimentConfig(_Strict):
    name: str = "semlayout"
    generator: GeneratorConfig = Field(default_factory=lambda: GeneratorConfig.model_validate({}))
    discriminator: DiscriminatorConfig = Field(
        default_factory=lambda: DiscriminatorConfig.model_validate({})
    )
    loss: LossConfig = Field(default_factory=lambda: LossConfig.model_validate({}))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig.model_validate({}))
    layout_fit: LayoutFitConfig = Field(default_factory=lambda: LayoutFitConfig.model_validate({}))
    polarity: PolarityConfig = Field(default_factory=lambda: PolarityConfig.model_validate({}))

    @model_validator(mode="after")
    def _crop_fits_network(self) -> ExperimentConfig:
        crop, g = self.train.crop_size, self.generator
        if crop is not None:
            bottleneck = crop / 2**g.n_down
            if crop > g.image_size or bottleneck < 2 or bottleneck != int(bottleneck):
                raise ValueError(
                    f"train.crop_size={crop} does not fit generator.image_size={g.image_size}, "
                    f"n_down={g.n_down}: expected at most image_size and a multiple of "
                    f"2**n_down={2**g.n_down} that leaves a bottleneck >= 2 px"
                )
        return self

    @model_validator(mode="after")
    def _distill_has_teacher(self) -> ExperimentConfig:
        if (self.loss.lambda_distill > 0) != bool(self.train.teacher):
            raise ValueError(
                "loss.lambda_distill > 0 and train.teacher go together: set both to distill "
                f"(lambda_distill={self.loss.lambda_distill}, teacher={self.train.teacher!r})"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    if not isinstance(data, dict):
        raise SemlayoutError(
            f"invalid config {source}: expected a mapping, got {type(data).__name__}"
        )
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise validation_error(err, f"config {source}") from None


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def config_dirs() -> list[Path]:
    """Where a config *name* is looked up, in order: $SEMLAYOUT_CONFIG_DIR, ./configs, and the
    configs shipped inside the package (so a wheel works without the checkout)."""
    from importlib.resources import files

    dirs = (
        [Path(os.environ["SEMLAYOUT_CONFIG_DIR"])] if os.environ.get("SEMLAYOUT_CONFIG_DIR") else []
    )
    return [*dirs, Path.cwd() / "configs", Path(str(files("semlayout.configs")))]


def resolve_config_path(spec: str | Path) -> Path:
    """A config file path, or a name such as `small` looked up as `<dir>/small.yaml`."""
    text = str(spec)
    if not text.strip():
        raise SemlayoutError("config is empty; expected a name such as 'small' or a file path")
    p = Path(text).expanduser()
    if p.is_file():
        return p
    if p.suffix in CONFIG_SUFFIXES or "/" in text:
        raise SemlayoutError(f"config file not found: {text}")
    for d in config_dirs():
        for ext in CONFIG_SUFFIXES:
            if (d / f"{text}{ext}").is_file():
                return d / f"{text}{ext}"
    names = sorted({f.stem for d in config_dirs() if d.is_dir() for f in d.glob("*.y*ml")})
    raise SemlayoutError(
        f"unknown config '{text}': expected a file path or one of {names or '(none found)'}"
    )


def read_config_file(path: str | Path, what: str = "config") -> Any:
    """The parsed YAML (or JSON) of a config file; unreadable or invalid text is one line."""
    path = Path(path)
    if not path.is_file():
        raise SemlayoutError(f"{what} file not found: {path}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SemlayoutError(f"{what} {path} is not a UTF-8 text file") from None
    except yaml.YAMLError as err:
        raise SemlayoutError(f"{what} {path} is not valid YAML: {yaml_error_line(err)}") from None


def load_config(spec: str | Path) -> ExperimentConfig:
    """Load an experiment config by name (`small`) or path; errors name the file and the bad key."""
    path = resolve_config_path(spec)
    return config_from_dict(read_config_file(path) or {}, source=str(path))


def yaml_error_line(err: Exception) -> str:
    """A YAML parser error on one line: what went wrong and where (line, column)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return (
        f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
        if mark is not None
        else str(problem)
    )


def apply_overrides(cfg: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """Return a copy with dotted-key overrides applied, e.g. {"train.epochs": 2}."""
    data = cfg.to_dict()
    for dotted, value in overrides.items():
        node = data
        keys = dotted.split(".")
        for k in keys[:-1]:
            if k not in node or not isinstance(node[k], dict):
                raise SemlayoutError(f"unknown config key '{dotted}'")
            node = node[k]
        if keys[-1] not in node:
            raise SemlayoutError(f"unknown config key '{dotted}'")
        node[keys[-1]] = value
    return config_from_dict(data, source="<overrides>")
