"""The served model's tool / layer profiles (`semlayout.profiles`): loaded with it, swapped
with it.

`with_profiles(loaded)` gives a `LoadedModel` one translator per profile its model learned,
views over the same weights (`semlayout.inference_profiles`), so the micro-batcher picks the
profile of each request's `layer` label; a backend that cannot serve them (ONNX) is said once,
at load (a warning here, `profile_note` in /readyz), and every answer says `X-Profile: none`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from semlayout.serving.engine import LoadedModel

log = logging.getLogger("semlayout.serving")


def with_profiles(loaded: LoadedModel) -> LoadedModel:
    """`loaded` with a translator per profile its model learned (one set of weights), or the
    reason its backend cannot serve them (logged)."""
    from semlayout.inference import Translator
    from semlayout.inference_profiles import profile_note, profile_translators

    tr = loaded.translator
    if not isinstance(tr, Translator):
        return loaded
    note = profile_note(tr)
    if note is not None:
        log.warning("model %s (version %s): %s", loaded.source, loaded.version, note)
    return replace(loaded, profiles=dict(profile_translators(tr)), profile_note=note)
