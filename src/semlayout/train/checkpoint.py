"""Checkpoint folders: config.json + weights.safetensors (+ train_state.pt). No pickles.

```
CKPT/config.json          {"format": "semlayout-checkpoint/1", "config": {...}, "step", "epoch",
                           "created"}
CKPT/weights.safetensors  "G_A.<param>", "G_B.<param>", "D_A.<param>", "D_B.<param>" (buffers too)
CKPT/train_state.pt       optional: optimisers, image pools, RNG states, data position;
                          plain tensors/containers, read with torch.load(weights_only=True)
```
A checkpoint rebuilds its networks from its own config: `load_checkpoint(path)`.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from semlayout.atomic import atomic_dir
from semlayout.config import ExperimentConfig, config_from_dict
from semlayout.errors import SemlayoutError
from semlayout.models.patchgan import PatchDiscriminator
from semlayout.models.unet import UNetGenerator

FORMAT = "semlayout-checkpoint/1"
NET_NAMES = ("G_A", "G_B", "D_A", "D_B")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
TRAIN_STATE_FILE = "train_state.pt"


def build_generator(cfg: ExperimentConfig, name: str) -> UNetGenerator:
    """G_A (SEM -> layout) or G_B (layout -> SEM); `input_norm` applies to G_A only (a layout is
    binary), `polarity_flip` to the SEM side of each (G_A's input, G_B's output)."""
    if name == "G_B":
        return UNetGenerator(
            cfg.generator.model_copy(update={"input_norm": "none"}), flip_side="output"
        )
    return UNetGenerator(cfg.generator, flip_side="input")


def build_networks(cfg: ExperimentConfig) -> dict[str, nn.Module]:
    """G_A: SEM -> layout, G_B: layout -> SEM; D_A judges (SEM, layout), D_B (layout, SEM)."""
    return {
        "G_A": build_generator(cfg, "G_A"),
        "G_B": build_generator(cfg, "G_B"),
        "D_A": PatchDiscriminator(cfg.discriminator),
        "D_B": PatchDiscriminator(cfg.discriminator),
    }


def _unwrap(net: nn.Module) -> nn.Module:
    return getattr(net, "module", net)  # DDP / compiled wrappers keep the real net in .module


def save_checkpoint(
    dest: str | Path,
    cfg: ExperimentConfig,
    nets: dict[str, nn.Module],
    step: int,
    epoch: int,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically; returns `dest`."""
    dest = Path(dest)
    tensors: dict[str, torch.Tensor] = {}
    for name, net in nets.items():
        for key, value in _unwrap(net).state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
    meta = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "step": int(step),
        "epoch": int(epoch),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "networks": sorted(nets),
    }
    with atomic_dir(dest) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE_FILE)
    return dest


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint folder, validated; raises SemlayoutError if not a checkpoint."""
    path = Path(path)
    if not path.is_dir():
        raise SemlayoutError(f"checkpoint folder not found: {path}")
    cfg_file, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not cfg_file.is_file() or not weights.is_file():
        missing = [p.name for p in (cfg_file, weights) if not p.is_file()]
        raise SemlayoutError(
            f"{path} is not a checkpoint folder: missing {', '.join(missing)} "
            f"(expected {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    try:
        meta = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SemlayoutError(f"{cfg_file} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise SemlayoutError(f"{cfg_file}: format {got!r} is not {FORMAT!r}")
    return meta


def load_state_into(net: nn.Module, name: str, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `net`, refusing any missing, unexpected or differently shaped entry."""
    own = _unwrap(net).state_dict()
    for key, value in own.items():
        if key not in state:
            raise SemlayoutError(
                f"{source}: parameter '{name}.{key}' is missing; the checkpoint was made "
                f"for another architecture"
            )
        if tuple(state[key].shape) != tuple(value.shape):
            raise SemlayoutError(
                f"{source}: parameter '{name}.{key}' has shape {tuple(state[key].shape)} in the "
                f"checkpoint but {tuple(value.shape)} in the network built from its config"
            )
    extra = sorted(set(state) - set(own))
    if extra:
        raise SemlayoutError(
            f"{source}: unexpected parameter '{name}.{extra[0]}' ({len(extra)} in all); the "
            f"checkpoint was made for another architecture"
        )
    _unwrap(net).load_state_dict(state, strict=True)


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[ExperimentConfig, dict[str, nn.Module], dict[str, Any]]:
    """Rebuild the networks a checkpoint folder describes and load their weights.

    Returns `(cfg, {"G_A", "G_B", "D_A", "D_B"}: nn.Module in eval mode, meta)`, with
    meta = config.json minus the config, plus "path" and "has_train_state".
    """
    path = Path(path)
    meta = read_checkpoint_meta(path)
    cfg = config_from_dict(meta.get("config", {}), source=str(path / CONFIG_FILE))
    try:
        flat = load_file(str(path / WEIGHTS_FILE), device=str(map_location))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise SemlayoutError(
            f"{path / WEIGHTS_FILE} is not a readable safetensors file: {err}"
        ) from None
    nets = build_networks(cfg)
    per_net: dict[str, dict[str, torch.Tensor]] = {n: {} for n in nets}
    for key, value in flat.items():
        name, _, rest = key.partition(".")
        if name not in per_net:
            raise SemlayoutError(f"{path / WEIGHTS_FILE}: unexpected key '{key}'")
        per_net[name][rest] = value
    for name, net in nets.items():
        load_state_into(net, name, per_net[name], str(path / WEIGHTS_FILE))
        net.to(map_location).eval()
    info = {k: v for k, v in meta.items() if k != "config"}
    info["path"] = str(path)
    info["has_train_state"] = (path / TRAIN_STATE_FILE).is_file()
    return cfg, nets, info


def load_train_state(path: str | Path) -> dict[str, Any]:
    """The optimiser/pool/RNG/data-position state saved beside the weights (weights_only)."""
    f = Path(path) / TRAIN_STATE_FILE
    if not f.is_file():
        raise SemlayoutError(f"{path} has no {TRAIN_STATE_FILE}; it cannot be resumed exactly")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as err:
        raise SemlayoutError(
            f"{f} is corrupt or truncated ({str(err).splitlines()[0]}); resume from an "
            "earlier checkpoint"
        ) from None


def prune_checkpoints(ckpt_root: Path, keep: int) -> None:
    """Delete all but the `keep` newest step-NNNNNN folders of RUN/checkpoints."""
    steps = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
