"""Refuse bad input BEFORE the first step: missing/unreadable data, an empty data set, a bad config.

Used by `make run` (pipelines.run_local) and by `semlayout pipeline run|submit`; the
first component (`ingest`) repeats the data checks where the data really is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from semlayout.errors import SemlayoutError


def check_data_uri(data_uri: str, n_synth: int) -> dict[str, Any]:
    """-> a short description of the data; raises `SemlayoutError` when it cannot be used."""
    if not data_uri:
        if n_synth < 1:
            raise SemlayoutError(
                f"--n-synth {n_synth}: expected >= 1 pairs to synthesise when no --data is given"
            )
        return {"kind": "synthetic", "n": n_synth}
    if data_uri.startswith("s3://"):
        from semlayout.storage import open_store

        keys = open_store(data_uri).list("")
        if not keys:
            raise SemlayoutError(
                f"data URI {data_uri} holds no objects; expected a pair folder or intake batches"
            )
        if "manifest.csv" not in keys and not any(k.startswith("batches/") for k in keys):
            raise SemlayoutError(
                f"data URI {data_uri} is neither a pair folder (no manifest.csv) "
                "nor an intake prefix (no batches/)"
            )
        return {"kind": "s3", "uri": data_uri, "objects": len(keys)}
    from semlayout.data.pairs import read_manifest

    path = Path(data_uri.removeprefix("file://")).expanduser()
    if not path.exists():
        raise SemlayoutError(f"data folder not found: {data_uri}")
    if not path.is_dir():
        raise SemlayoutError(
            f"data URI {data_uri} is a file; expected a pair folder with manifest.csv"
        )
    records = read_manifest(path)
    if not records:
        raise SemlayoutError(f"data folder {data_uri} has no pairs: manifest.csv lists none")
    missing = [
        r.id for r in records if not Path(r.sem_path).is_file() or not Path(r.layout_path).is_file()
    ]
    if len(missing) == len(records):
        raise SemlayoutError(
            f"data folder {data_uri}: none of the {len(records)} pairs has its images on disk"
        )
    return {
        "kind": "folder",
        "path": str(path.resolve()),
        "n": len(records),
        "missing_images": len(missing),
    }


def check_config(config: str, overrides_json: str = "") -> Any:
    from semlayout_components.common import load_experiment_config

    return load_experiment_config(config, overrides_json)


def check_floors(floors: dict[str, float], tolerance: float) -> None:
    from semlayout.gate import gate_config

    for direction, value in floors.items():
        if not 0.0 <= value <= 1.0:
            raise SemlayoutError(
                f"SSIM floor for {direction} = {value}: expected a value in [0, 1]"
            )
    gate_config(floors=floors, tolerance=tolerance)
