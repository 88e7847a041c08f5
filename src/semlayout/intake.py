"""Reviewed-pair intake: validate a pair folder, upload it to an object store as one batch.

Layout under the intake prefix (`s3://BUCKET/PREFIX` or a local folder):
```
objects/<sha256>.png                 content-addressed images (sha256 of the PNG file bytes)
batches/<batch_id>/batch.json        counts, uploader, created, source, rejects
batches/<batch_id>/manifest.csv      written LAST: id,sem_path,layout_path,
                                     pattern_type[,clean_path],
                                     sem_sha256,layout_sha256,pair_sha256,<extra columns>,
                                     polarity,polarity_margin,polarity_source;
                                     paths are keys relative to PREFIX ("objects/<sha256>.png")
```
Readers trust only batches with a manifest. `batch_id` is a hash of the sorted pair content
hashes, so uploading the same folder again is the same batch and uploads nothing. Objects that
already exist are skipped (HEAD), so an interrupted upload resumes where it stopped, and the
manifest appears only once every object it names is stored.

Validation (all pairs are checked before anything is uploaded): the pair-folder contract
(`semlayout.data.pairs`), PNG files, 8-bit grayscale, 304x304 SEM and 250x250 binary layout,
alignment QC (`semlayout.data.align.align_pair`, the batch's polarity estimated from its
confident pairs unless fixed: `polarity_prior`), and no duplicate SEM or pair within the batch.
Each pair's polarity as the aligner recorded it travels in the manifest (an input column
`polarity` is kept as `declared_polarity`).
"""

from __future__ import annotations

import csv
import datetime as dt
import getpass
import hashlib
import io
import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from semlayout.errors import SemlayoutError
from semlayout.storage import open_store

FORMAT = "semlayout-intake-batch/1"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OBJECTS = "objects"
BATCHES = "batches"


@dataclass
class Reject:
    id: str
    # short code: missing, not_png, bit_depth, wrong_size, not_binary, align:<reason>, duplicate
    reason: str
    detail: str


@dataclass
class ValidPair:
    id: str
    pattern_type: str
    files: dict[str, Path]  # role (sem, layout, clean) -> local file
    hashes: dict[str, str]  # role -> sha256 of the file bytes
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pair_hash(self) -> str:
        return hashlib.sha256(f"{self.hashes['sem']}:{self.hashes['layout']}".encode()).hexdigest()


@dataclass
class Validation:
    valid: list[ValidPair]
    rejects: list[Reject]


class BatchRefused(SemlayoutError):
    """Some pairs are invalid and `skip_invalid` was not given: nothing was uploaded."""

    def __init__(self, rejects: list[Reject], n_total: int):
        self.rejects = rejects
        super().__init__(
            f"batch refused: {len(rejects)} of {n_total} pairs are invalid "
            f"({', '.join(sorted({r.reason for r in rejects}))}); nothing was uploaded. "
            "Fix them or pass --skip-invalid to upload the valid pairs only"
        )


@dataclass
class UploadResult:
    batch_id: str
    uri: str
    n_pairs: int
    rejects: list[Reject]
    objects_uploaded: int
    objects_skipped: int
    already_complete: bool
    manifest_key: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_rejected"] = len(self.rejects)
        return d


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(rec: Any) -> dict[str, Path]:
    """A manifest record's files by role (sem, layout[, clean])."""
    files = {"sem": rec.sem_path, "layout": rec.layout_path}
    if rec.clean_path is not None:
        files["clean"] = rec.clean_path
    return files


def _read_pair(rec: Any) -> tuple[dict[str, Path], Any, Any]:
    """(files by role, SEM, layout) of one manifest record; `ImageRejected` names a problem."""
    from semlayout.data.pairs import (
        SEM_RAW_SHAPE,
        TEMPLATE_SHAPE,
        ImageRejected,
        check_binary_layout,
        read_gray8,
    )

    files = _files(rec)
    for path in files.values():
        if not path.is_file():
            raise ImageRejected(path, "missing", "file not found")
        with open(path, "rb") as f:
            if f.read(8) != PNG_MAGIC:
                raise ImageRejected(path, "not_png", "expected a PNG file")
    sem = read_gray8(rec.sem_path, expected_shape=SEM_RAW_SHAPE)
    layout = check_binary_layout(
        read_gray8(rec.layout_path, expected_shape=TEMPLATE_SHAPE), str(rec.layout_path)
    )
    if "clean" in files:
        read_gray8(files["clean"], expected_shape=sem.shape)
    return files, sem, layout


def _align_all(records: list[Any], cfg: Any, prior: Any, progress: bool) -> list[Any]:
    """Per record: an `AlignResult`, or a `Reject` for a file problem. With no fixed `prior`,
    the batch's polarity is estimated from its confident pairs and the pairs it can help
    are aligned again with it (as `semlayout align` does for a folder)."""
    from tqdm import tqdm

    from semlayout.data.align import align_pair
    from semlayout.data.align_polarity import estimate_priors, needs_prior
    from semlayout.data.pairs import ImageRejected

    out: list[Any] = []
    for rec in tqdm(records, desc="validating", unit="pair", disable=not progress):
        try:
            _, sem, layout = _read_pair(rec)
        except ImageRejected as err:
            out.append(Reject(rec.id, err.reason, str(err)))
            continue
        fixed = prior.for_pattern(rec.pattern_type) if prior is not None else None
        out.append(align_pair(sem, layout, cfg, fixed))
    if prior is not None:
        return out
    table = estimate_priors(
        ((r.pattern_type, res) for r, res in zip(records, out, strict=True)),
        cfg.min_polarity_margin,
        cfg.prior_min_pairs,
        cfg.prior_min_share,
    )
    for i, (rec, res) in enumerate(zip(records, out, strict=True)):
        pol = table.for_pattern(rec.pattern_type)
        if not isinstance(res, Reject) and needs_prior(res, pol):
            _, sem, layout = _read_pair(rec)
            out[i] = align_pair(sem, layout, cfg, pol)
    return out


def validate_pairs(
    pairs_dir: str | os.PathLike[str],
    align_cfg: Any = None,
    progress: bool = False,
    polarity_prior: Any = None,
) -> Validation:
    """Check every pair of a pair folder; a broken manifest raises, a bad pair becomes a
    `Reject`. `polarity_prior`: a fixed `PriorTable` (`align_polarity.prior_table`); None
    estimates the batch's polarity from its confident pairs."""
    from semlayout.data.align import AlignConfig
    from semlayout.data.alignment_table import DECLARED_POLARITY, polarity_columns
    from semlayout.data.pairs import read_manifest

    cfg = align_cfg or AlignConfig()
    records = read_manifest(Path(pairs_dir))
    valid: list[ValidPair] = []
    rejects: list[Reject] = []
    seen_sem: dict[str, str] = {}
    seen_pair: dict[str, str] = {}
    for rec, result in zip(
        records, _align_all(records, cfg, polarity_prior, progress), strict=True
    ):
        if isinstance(result, Reject):
            rejects.append(result)
            continue
        if not result.qc_pass:
            detail = f"alignment QC failed: {result.qc_summary()}"
            rejects.append(Reject(rec.id, f"align:{result.reason}", detail))
            continue
        files = _files(rec)
        extra = {(DECLARED_POLARITY if k == "polarity" else k): v for k, v in rec.extra.items()}
        extra.update(polarity_columns(result))
        pair = ValidPair(
            rec.id, rec.pattern_type, files, {r: _sha256_file(p) for r, p in files.items()}, extra
        )
        if pair.pair_hash in seen_pair:
            first = seen_pair[pair.pair_hash]
            rejects.append(Reject(rec.id, "duplicate", f"same SEM and layout as pair '{first}'"))
            continue
        if pair.hashes["sem"] in seen_sem:
            first = seen_sem[pair.hashes["sem"]]
            rejects.append(Reject(rec.id, "duplicate", f"same SEM image as pair '{first}'"))
            continue
        seen_pair[pair.pair_hash] = rec.id
        seen_sem[pair.hashes["sem"]] = rec.id
        valid.append(pair)
    return Validation(valid, rejects)


def batch_id_for(pairs: list[ValidPair]) -> str:
    joined = "\n".join(sorted(p.pair_hash for p in pairs))
    return hashlib.sha256(joined.encode()).hexdigest()[:20]


def object_key(sha: str) -> str:
    return f"{OBJECTS}/{sha}.png"


def _manifest_csv(pairs: list[ValidPair]) -> str:
    has_clean = any("clean" in p.files for p in pairs)
    extra_cols: list[str] = []
    for p in pairs:
        extra_cols += [k for k in p.extra if k not in extra_cols]
    cols = ["id", "sem_path", "layout_path", "pattern_type"] + (["clean_path"] if has_clean else [])
    cols += ["sem_sha256", "layout_sha256", "pair_sha256"] + [
        c for c in extra_cols if c not in cols
    ]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for p in pairs:
        row = {
            **p.extra,
            "id": p.id,
            "sem_path": object_key(p.hashes["sem"]),
            "layout_path": object_key(p.hashes["layout"]),
            "pattern_type": p.pattern_type,
            "sem_sha256": p.hashes["sem"],
            "layout_sha256": p.hashes["layout"],
            "pair_sha256": p.pair_hash,
        }
        if has_clean:
            row["clean_path"] = object_key(p.hashes["clean"]) if "clean" in p.files else ""
        w.writerow({c: row.get(c, "") for c in cols})
    return buf.getvalue()


def check_destination(uri: str) -> str:
    """An intake destination is `s3://BUCKET/PREFIX`, `file:///abs/folder`, or a folder that
    exists: `fab-data/reviewed` meant as a bucket must not quietly become a local folder."""
    if "://" in uri or Path(uri).is_dir():
        return uri
    raise SemlayoutError(
        f"--to {uri}: no scheme and not an existing folder; for S3 write s3://{uri.lstrip('/')}, "
        f"for a new local folder file://{Path(uri).absolute()} (or create it first)"
    )


def upload_batch(
    pairs_dir: str | os.PathLike[str],
    uri: str,
    skip_invalid: bool = False,
    uploader: str | None = None,
    progress: bool = False,
    align_cfg: Any = None,
    on_object: Callable[[str], None] | None = None,
    workers: int = 4,
    polarity_prior: Any = None,
) -> UploadResult:
    """Validate `pairs_dir` and upload it as one batch under `uri` (see the module docstring).

    Raises `BatchRefused` (nothing uploaded) when a pair is invalid and `skip_invalid` is
    False. `on_object(key)` is called after each object is stored (from `workers` upload
    threads; progress hooks, tests).
    """
    store = open_store(check_destination(uri))
    checked = validate_pairs(pairs_dir, align_cfg, progress=progress, polarity_prior=polarity_prior)
    n_total = len(checked.valid) + len(checked.rejects)
    if checked.rejects and not skip_invalid:
        raise BatchRefused(checked.rejects, n_total)
    if not checked.valid:
        raise SemlayoutError(
            f"no valid pairs in {pairs_dir}: all {n_total} were rejected; nothing was uploaded"
        )
    pairs = sorted(checked.valid, key=lambda p: p.id)
    bid = batch_id_for(pairs)
    manifest_key = f"{BATCHES}/{bid}/manifest.csv"
    if store.exists(manifest_key):
        return UploadResult(bid, store.uri, len(pairs), checked.rejects, 0, 0, True, manifest_key)

    # content-addressed: one object per distinct file, whoever else uses it
    todo: dict[str, Path] = {}
    for p in pairs:
        for role, path in p.files.items():
            todo.setdefault(object_key(p.hashes[role]), path)
    uploaded, skipped = _upload_objects(store, todo, workers, progress, on_object)

    info = {
        "format": FORMAT,
        "batch_id": bid,
        "created": dt.datetime.now(dt.UTC)
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z"),
        "uploader": uploader or _default_uploader(),
        "source": str(Path(pairs_dir).absolute()),
        "counts": {
            "pairs": len(pairs),
            "rejected": len(checked.rejects),
            "objects": len(todo),
            "families": _family_counts(pairs),
        },
        "rejects": [asdict(r) for r in checked.rejects],
    }
    store.put_bytes(f"{BATCHES}/{bid}/batch.json", (json.dumps(info, indent=2) + "\n").encode())
    store.put_bytes(manifest_key, _manifest_csv(pairs).encode())  # last: the batch now exists
    return UploadResult(
        bid, store.uri, len(pairs), checked.rejects, uploaded, skipped, False, manifest_key
    )


def _upload_objects(
    store: Any,
    todo: dict[str, Path],
    workers: int,
    progress: bool,
    on_object: Callable[[str], None] | None,
) -> tuple[int, int]:
    """Store every `key -> file` of `todo` not already in the store, `workers` at a time;
    -> (uploaded, skipped). The first failure stops the rest and is raised: objects already
    stored stay (a re-run resumes), and no manifest is written, so readers never see a batch."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    from tqdm import tqdm

    failed = threading.Event()

    def _one(key: str, path: Path) -> bool | None:
        """Store one object unless it is already there (HEAD); True if it was uploaded,
        None if skipped because another upload failed."""
        if failed.is_set():
            return None
        try:
            if store.exists(key):
                return False
            store.put_bytes(key, path.read_bytes())
            if on_object is not None:
                on_object(key)
            return True
        except BaseException:
            failed.set()
            raise

    bar = tqdm(total=len(todo), desc="objects", unit="obj", disable=not progress)
    # object stores answer one request per round trip: a few in flight hide the latency
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(_one, k, p) for k, p in sorted(todo.items())]
        for f in futures:
            f.add_done_callback(lambda _f: bar.update())
        _done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()  # stop at the first failure; objects already stored stay (resumable)
    bar.close()
    finished = [f for f in futures if not f.cancelled()]
    errors = [err for f in finished if (err := f.exception()) is not None]
    if errors:
        raise errors[0]
    uploaded = sum(1 for f in finished if f.result() is True)
    skipped = sum(1 for f in finished if f.result() is False)
    return uploaded, skipped


def _family_counts(pairs: list[ValidPair]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in pairs:
        out[p.pattern_type] = out.get(p.pattern_type, 0) + 1
    return dict(sorted(out.items()))


def _default_uploader() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"
