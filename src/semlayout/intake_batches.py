"""Reading the intake bucket: list the complete batches, download them as one pair folder.

The bucket layout and the batch format are `semlayout.intake`'s; only batches with a
manifest exist for readers.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

from semlayout.errors import SemlayoutError
from semlayout.intake import BATCHES
from semlayout.storage import open_store


def list_batches(uri: str, include_incomplete: bool = False) -> list[dict[str, Any]]:
    """Batches under `uri`, oldest first:
    {batch_id, complete, created, uploader, pairs, rejected, ...}."""
    store = open_store(uri)
    keys = store.list(f"{BATCHES}/")
    ids = sorted({k.split("/")[1] for k in keys if k.count("/") >= 2})
    present = set(keys)
    out = []
    for bid in ids:
        complete = f"{BATCHES}/{bid}/manifest.csv" in present
        if not complete and not include_incomplete:
            continue
        info: dict[str, Any] = {}
        if f"{BATCHES}/{bid}/batch.json" in present:
            try:
                info = json.loads(store.get_bytes(f"{BATCHES}/{bid}/batch.json"))
            except json.JSONDecodeError:
                info = {}
        counts = info.get("counts", {})
        out.append(
            {
                "batch_id": bid,
                "complete": complete,
                "created": info.get("created"),
                "uploader": info.get("uploader"),
                "pairs": counts.get("pairs"),
                "rejected": counts.get("rejected"),
                "objects": counts.get("objects"),
                "families": counts.get("families", {}),
            }
        )
    return sorted(out, key=lambda b: (b["created"] or "", b["batch_id"]))


def _parse_since(since: str | dt.datetime | None) -> dt.datetime | None:
    if since is None or isinstance(since, dt.datetime):
        return since if since is None or since.tzinfo else since.replace(tzinfo=dt.UTC)
    try:
        parsed = dt.datetime.fromisoformat(str(since).replace("Z", "+00:00"))
    except ValueError:
        raise SemlayoutError(
            f"since '{since}' is not an ISO date/time (e.g. 2026-11-24T05:00:00Z)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def download_batches(
    uri: str,
    dest_dir: str | os.PathLike[str],
    since: str | dt.datetime | None = None,
) -> Path:
    """Materialise every complete batch (created at or after `since`) as ONE local pair folder.

    `dest_dir/manifest.csv` (+ `batch_id` column), `sem/<id>.png`, `layout/<id>.png`,
    `clean/<id>.png` when uploaded. A pair present in several batches appears once; an id
    reused by different content is suffixed with its pair hash. Written atomically.
    """
    from semlayout.atomic import atomic_dir

    store = open_store(uri)
    cutoff = _parse_since(since)
    batches = []
    for b in list_batches(uri):
        created = _parse_since(b["created"]) if b["created"] else None
        if cutoff is None or (created is not None and created >= cutoff):
            batches.append(b)
    if not batches:
        when = f" created since {since}" if since is not None else ""
        raise SemlayoutError(f"no complete intake batches{when} under {store.uri}")
    rows: list[dict[str, str]] = []
    seen_pairs: set[str] = set()
    used_ids: set[str] = set()
    with atomic_dir(dest_dir) as tmp:
        for b in batches:
            text = store.get_bytes(f"{BATCHES}/{b['batch_id']}/manifest.csv").decode("utf-8")
            for row in csv.DictReader(io.StringIO(text)):
                if row.get("pair_sha256") in seen_pairs:
                    continue
                seen_pairs.add(row.get("pair_sha256", ""))
                pid = row["id"]
                if pid in used_ids:
                    pid = f"{pid}-{row.get('pair_sha256', '')[:8]}"
                used_ids.add(pid)
                out = {**row, "id": pid, "batch_id": b["batch_id"]}
                for role in ("sem", "layout", "clean"):
                    key = row.get(f"{role}_path") or ""
                    if not key:
                        continue
                    local = tmp / role / f"{pid}.png"
                    local.parent.mkdir(exist_ok=True)
                    data = store.get_bytes(key)
                    if role != "clean" and hashlib.sha256(data).hexdigest() != row.get(
                        f"{role}_sha256"
                    ):
                        raise SemlayoutError(
                            f"object {key} of batch {b['batch_id']} does not match its hash"
                        )
                    local.write_bytes(data)
                    out[f"{role}_path"] = f"{role}/{pid}.png"
                rows.append(out)
        cols: list[str] = ["id", "sem_path", "layout_path", "pattern_type"]
        if any(r.get("clean_path") for r in rows):
            cols.append("clean_path")
        for r in rows:
            cols += [k for k in r if k not in cols]
        with open(tmp / "manifest.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
            w.writeheader()
            for r in rows:
                w.writerow({c: r.get(c, "") for c in cols})
    return Path(dest_dir)
