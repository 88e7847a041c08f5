"""Glue shared by the components' bodies (runs inside the step's process, never imports kfp).

Components are lightweight KFP components: only the function body travels, so
whatever they share must be importable from the image — this module is.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from semlayout.errors import SemlayoutError


def load_experiment_config(spec: str, overrides_json: str = "") -> Any:
    """-> a validated `ExperimentConfig` from a name/path plus JSON dotted-key overrides."""
    from semlayout.config import apply_overrides, load_config

    cfg = load_config(spec)
    overrides = parse_json_object(overrides_json, "config overrides")
    return apply_overrides(cfg, overrides) if overrides else cfg


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    if not text or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise SemlayoutError(f"{what} are not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise SemlayoutError(f"{what} must be a JSON object, got {text!r}")
    return value


def write_json(path: str | Path, data: Any) -> None:
    from semlayout.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


class Stopwatch:
    """`with Stopwatch() as sw: ...; sw.seconds` — wall time of the step's own work."""

    def __enter__(self) -> Stopwatch:
        self._t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = round(time.perf_counter() - self._t0, 3)


def tree_sha256(folder: str | Path) -> str:
    """Content hash of a folder (relative paths and bytes, sorted): the data lineage key."""
    import hashlib

    root = Path(folder)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def run_name(pipeline_run: str, data_uri: str, data_sha: str, config: str) -> str:
    """An MLflow run name a person can read: `training · pairs (1a2b3c4d) · small · 11:48`.

    The pipeline comes from the KFP job name (`semlayout-training-2026-12-06-11-48-01-...`),
    the data from its URI (a synthesised set: `synth`) and content hash."""
    import re

    m = re.match(r"semlayout-(\w+)-(\d{4}-\d{2}-\d{2})-(\d{2})-(\d{2})", pipeline_run or "")
    pipeline = m.group(1) if m else (pipeline_run or "run")
    when = f" · {m.group(2)} {m.group(3)}:{m.group(4)}" if m else ""
    if data_uri.startswith("synth:"):  # synth:n=800,seed=0
        data = "synth " + data_uri.split(":", 1)[1]
    else:
        data = Path(data_uri.rstrip("/")).name or data_uri
    sha = f" ({data_sha[:8]})" if data_sha else ""
    return f"{pipeline} · {data}{sha} · {config}{when}"


def git_commit() -> str:
    """The code version: baked into the image as SEMLAYOUT_GIT_COMMIT, else asked of git."""
    import subprocess

    if os.environ.get("SEMLAYOUT_GIT_COMMIT"):
        return os.environ["SEMLAYOUT_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
