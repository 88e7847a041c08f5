"""Feedback store: reviewed SEM/layout pairs posted to the API, kept as a pair folder.

Each pair is written into `folder` in the pair-folder format (`sem/<id>.png`,
`layout/<id>.png`, `manifest.csv`), so the fine-tune pipeline reads it like any
other pair folder, and a row goes into the monitoring store's `feedback` table
(what the loop counts). Ordering makes a crash harmless: images first (atomic
writes), then the manifest is rewritten to a temporary file and renamed over the
old one, so a reader sees either the old or the new manifest, and every row it
lists has its images. A thread lock plus an advisory file lock serialise writers
(several server workers may share one folder).

What is refused (nothing is written then): wrong sizes or a non-binary layout
(`ImageRejected`), a pair whose template alignment QC fails (`ImageRejected`,
reason `align:<reason>`: the fine-tune would drop it, and the trigger would count
it), and a SEM already in the folder (`DuplicatePair`: a pair counts once, as in
the S3 intake). Each manifest row carries the SHA-256 of its SEM and layout pixels
(`*_pixel_sha256`) and the polarity the aligner recorded (`polarity`, `polarity_margin`,
`polarity_source`). Pairs arrive one at a time, so the data set's polarity prior is the one
the store was given (`polarity_prior`: a layer's polarity from config), or else the one the
pairs already accepted show (their confident `polarity`, per pattern type).
"""

from __future__ import annotations

import csv
import fcntl
import io
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from semlayout.atomic import atomic_write_bytes, atomic_write_text
from semlayout.data.pairs import (
    SEM_RAW_SHAPE,
    TEMPLATE_SHAPE,
    ImageRejected,
    check_binary_layout,
    encode_png,
    read_gray8,
)
from semlayout.errors import SemlayoutError
from semlayout.monitoring.performance import sha256
from semlayout.monitoring.store import MonitorStore

# *_pixel_sha256: of the decoded pixels (the monitor store's hashes), not of the PNG file bytes
# that the S3 intake's sem_sha256 columns hold
COLUMNS = (
    "id",
    "sem_path",
    "layout_path",
    "pattern_type",
    "source",
    "received_at",
    "sem_pixel_sha256",
    "layout_pixel_sha256",
    "polarity",
    "polarity_margin",
    "polarity_source",
)
_PATTERN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_pattern_type(pattern_type: str) -> str:
    if not _PATTERN_RE.fullmatch(
        pattern_type or ""
    ):  # fullmatch: "$" would let a final "\n" through
        raise SemlayoutError(
            f"pattern_type '{pattern_type[:80]}' is not valid: "
            "expected 1-64 letters, digits, '_', '.', '-'"
        )
    return pattern_type


class DuplicatePair(SemlayoutError):
    """This SEM is already in the feedback folder (the API answers 409)."""


class FeedbackStore:
    def __init__(
        self,
        folder: str | Path,
        store: MonitorStore | None = None,
        sem_shape: tuple[int, int] = SEM_RAW_SHAPE,
        layout_shape: tuple[int, int] = TEMPLATE_SHAPE,
        check_alignment: bool = True,
        polarity_prior: int | str | None = None,
    ):
        """`check_alignment=False` skips the template-alignment QC (tests of what the loop and the
        fine-tune do with pairs that got into a folder some other way). `polarity_prior`:
        the data set's polarity (+1/-1/bright/dark); None reads it from the accepted pairs."""
        self.folder = Path(folder)
        self.check_alignment = check_alignment
        self.polarity_prior = polarity_prior
        self.store = store
        self.sem_shape = sem_shape
        self.layout_shape = layout_shape
        self._lock = threading.Lock()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.folder / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def validate(self, sem: np.ndarray, layout: np.ndarray) -> None:
        if sem.shape != self.sem_shape:
            raise ImageRejected(
                "sem",
                "wrong_size",
                f"expected a raw SEM of {self.sem_shape[1]}x"
                f"{self.sem_shape[0]} px, got {sem.shape[1]}x{sem.shape[0]}",
            )
        if layout.shape != self.layout_shape:
            raise ImageRejected(
                "layout",
                "wrong_size",
                f"expected a layout template of "
                f"{self.layout_shape[1]}x{self.layout_shape[0]} px, got "
                f"{layout.shape[1]}x{layout.shape[0]}",
            )
        check_binary_layout(layout, "layout")

    def add(self, sem: np.ndarray, layout: np.ndarray, pattern_type: str) -> dict[str, str]:
        """Validate and store one reviewed pair; returns {"id", "sem_path", "layout_path", ...}."""
        check_pattern_type(pattern_type)
        self.validate(sem, layout)
        polarity = self._check_alignment(sem, layout, pattern_type) if self.check_alignment else {}
        sem_h, lay_h = sha256(sem), sha256(layout)
        pid = f"fb-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
        row = {
            "id": pid,
            "sem_path": f"sem/{pid}.png",
            "layout_path": f"layout/{pid}.png",
            "pattern_type": pattern_type,
            "source": "api_feedback",
            "received_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "sem_pixel_sha256": sem_h,
            "layout_pixel_sha256": lay_h,
            **polarity,
        }
        with self._locked():
            columns, rows = self._read_manifest()
            for old in rows:
                if not old.get(
                    "sem_pixel_sha256"
                ):  # a row from before the hash columns: hash it once,
                    old["sem_pixel_sha256"] = (
                        self._legacy_sem_hash(old) or ""
                    )  # kept by the rewrite below
                if old["sem_pixel_sha256"] == sem_h:
                    same = (
                        "the same pair" if old.get("layout_pixel_sha256") == lay_h else "this SEM"
                    )
                    raise DuplicatePair(
                        f"{same} was already received as '{old.get('id')}'; a SEM "
                        "counts once (nothing was stored)"
                    )
            atomic_write_bytes(self.folder / row["sem_path"], encode_png(sem))
            atomic_write_bytes(self.folder / row["layout_path"], encode_png(layout))
            self._write_manifest(columns, [*rows, row])
        if self.store is not None:
            self.store.add_feedback(
                id=pid,
                pattern_type=pattern_type,
                sem_sha256=sem_h,
                layout_sha256=lay_h,
                sem_path=row["sem_path"],
                layout_path=row["layout_path"],
                folder=str(self.folder),
                ts=time.time(),
            )
        return row

    def _check_alignment(
        self, sem: np.ndarray, layout: np.ndarray, pattern_type: str
    ) -> dict[str, str]:
        """Alignment QC with the data set's polarity prior; the pair's polarity columns."""
        from semlayout.data.align import AlignConfig, align_pair
        from semlayout.data.align_polarity import estimate_priors, fixed_prior
        from semlayout.data.alignment_table import polarity_columns, read_polarity_columns

        cfg = AlignConfig()
        if self.polarity_prior is not None:
            prior = fixed_prior(self.polarity_prior)
        else:
            accepted = read_polarity_columns(self._read_manifest()[1])
            table = estimate_priors(
                accepted, cfg.min_polarity_margin, cfg.prior_min_pairs, cfg.prior_min_share
            )
            prior = table.for_pattern(pattern_type)
        res = align_pair(sem, layout, cfg, prior)
        if not res.qc_pass:
            raise ImageRejected(
                "layout",
                f"align:{res.reason}",
                f"the template does not align with the SEM "
                f"(alignment QC failed: {res.qc_summary()}); nothing was stored",
            )
        return polarity_columns(res)

    def _legacy_sem_hash(self, row: dict[str, str]) -> str | None:
        path = self.folder / (row.get("sem_path") or "")
        try:
            return sha256(read_gray8(path))
        except ImageRejected:  # a missing or unreadable old image cannot be a duplicate of anything
            return None

    def _read_manifest(self) -> tuple[list[str], list[dict[str, str]]]:
        manifest = self.folder / "manifest.csv"
        columns = list(COLUMNS)
        if not manifest.is_file():
            return columns, []
        reader = csv.DictReader(io.StringIO(manifest.read_text(encoding="utf-8")))
        for c in reader.fieldnames or []:
            if c not in columns:
                columns.append(c)
        return columns, [dict(r) for r in reader]

    def _write_manifest(self, columns: list[str], rows: list[dict[str, str]]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c) or "" for c in columns})
        atomic_write_text(self.folder / "manifest.csv", buf.getvalue())

    def count(self) -> int:
        manifest = self.folder / "manifest.csv"
        if not manifest.is_file():
            return 0
        return sum(1 for _ in csv.DictReader(io.StringIO(manifest.read_text(encoding="utf-8"))))
