"""Where semlayout caches what it can fetch or rebuild again (registry downloads, ONNX exports).

`$SEMLAYOUT_CACHE_DIR/<kind>`, else `$XDG_CACHE_HOME/semlayout/<kind>`, else
`~/.cache/semlayout/<kind>`. Read when asked, never at import.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The cache folder for `kind` (e.g. "models", "onnx"); not created here."""
    env = os.environ.get("SEMLAYOUT_CACHE_DIR")
    if env:
        return Path(env) / kind
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "semlayout" / kind
