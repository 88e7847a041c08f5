"""Serving every tool / layer profile a model learned from one set of weights.

`profile_translators(tr)`: for an eager / bf16 `Translator`, one Translator per learned
profile (`semlayout.profiles`), each running `ProfileView`s of the SAME generators (no second
copy of the weights), so a server picks the profile per request. The ONNX backend exports the
shared network only: a model with profiles served by it answers every request with the shared
network (`profile_note` says so); `--backend auto` does not pick ONNX for such a model
(`Translator._load_fastest`).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from semlayout.inference import Translator


def learned_profiles(model: str | os.PathLike[str], tracking_uri: str | None = None) -> list[str]:
    """The tool / layer profiles the checkpoint `model` learned (from its config.json)."""
    from semlayout.inference import resolve_model_path

    ckpt, _ = resolve_model_path(model, tracking_uri)
    with contextlib.suppress(OSError, ValueError, LookupError, AttributeError, TypeError):
        meta = json.loads((ckpt / "config.json").read_text())
        return [str(p) for p in meta["config"]["generator"].get("profiles") or []]
    return []


def profile_translators(tr: Translator) -> dict[str, Translator]:
    """{profile: a Translator answering for it}, sharing `tr`'s weights; {} when `tr` learned
    no profile or its backend cannot serve them (ONNX: the shared network only)."""
    from semlayout.directions import DIRECTIONS
    from semlayout.inference import Translator
    from semlayout.inference_backends import NET_FOR_DIRECTION, Runner, eager_runner, profile_views

    if tr.eager is None:
        return {}
    nets, dev, dtype = tr.eager
    out: dict[str, Translator] = {}
    for label in tr.config.generator.profiles:
        views, _ = profile_views(tr.config, nets, label)
        runners: dict[str, Runner] = {
            d: eager_runner(views[NET_FOR_DIRECTION[d]], dev, dtype) for d in DIRECTIONS
        }
        info = {**tr.info, "profile": label}
        view = Translator(runners, tr.config, tr.image_size, tr.source, tr.backend, info)
        view.eager = tr.eager
        out[label] = view
    return out


def profile_note(tr: Translator) -> str | None:
    """Why the profiles `tr`'s model learned cannot be served by it (None: they can, or it
    learned none)."""
    learned = list(tr.config.generator.profiles)
    if not learned or tr.eager is not None:
        return None
    return (
        f"the {tr.backend} backend serves the shared network only: this model's profiles "
        f"({', '.join(learned)}) are not served (every answer says X-Profile: none); serve it "
        "with --backend eager (or auto, which picks eager for a model with profiles)"
    )
