"""Feedback store: reviewed SEM/layout pairs posted to the API, kept in an object store.

The images go to the feedback object store (`--feedback-uri`: a local folder or
`s3://bucket/prefix`, through `semlayout.storage`), addressed by content:
`objects/<sha256 of the decoded pixels>.png`. The pair itself exists once its row is in the
monitoring store's `feedback` table, which is written LAST. So a post that dies half-way
(kill -9, disk full, the database down) leaves at most objects no row names — an orphan that
nothing counts or trains on — and never a row without its images. Posting the same pair
again completes it: the objects are written again (same names, same bytes) and the row goes
in. `semlayout monitor fsck` (`semlayout.monitoring.feedback_fsck`) reports and repairs any
mismatch between the rows and the objects.

A SEM counts once: its pixel hash is unique in the table. A second post of it is refused with
`DuplicatePair` (409) before anything is written, and two replicas racing with the same SEM
end with one row (the database's unique index decides; the loser answers 409).

What else is refused (nothing is written then): wrong sizes or a non-binary layout
(`ImageRejected`), a pair whose template alignment QC fails (`ImageRejected`, reason
`align:<reason>`: the fine-tune would drop it, and the trigger would count it). A store that
cannot take the write answers `StoreUnavailable` (503).

Each row carries the polarity the aligner recorded for the pair (`polarity` +1 bright / -1
dark, `polarity_margin`, `polarity_source` "pair" or "prior", as in `alignment.csv`; empty
when the alignment QC was skipped). Pairs arrive one at a time, so the data set's polarity
prior is the one the store was given (`polarity_prior`: a layer's polarity), or else the one
the pairs this store already accepted show (their confident polarity, per pattern type).
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from semlayout.data.pairs import (
    SEM_RAW_SHAPE,
    TEMPLATE_SHAPE,
    ImageRejected,
    check_binary_layout,
    encode_png,
)
from semlayout.errors import SemlayoutError
from semlayout.monitoring import schema as t
from semlayout.monitoring.database import StoreUnavailable
from semlayout.monitoring.performance import sha256
from semlayout.monitoring.store import MonitorStore
from semlayout.storage import Store, open_store, parse_uri

OBJECTS = "objects"
PROBE = "probes/readyz"  # overwritten by every replica's readiness check
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


def object_key(pixel_sha256: str) -> str:
    return f"{OBJECTS}/{pixel_sha256}.png"


def feedback_uri(uri: str | Path) -> str:
    """The canonical form of a feedback store URI (rows name it): an absolute folder path, or
    the `s3://bucket/prefix` as given."""
    scheme, _bucket, path = parse_uri(str(uri))
    if scheme == "file":
        return str(Path(path).expanduser().absolute())
    return str(uri).rstrip("/")


class DuplicatePair(SemlayoutError):
    """This SEM is already in the feedback store (the API answers 409)."""


@dataclass(frozen=True)
class FeedbackRow:
    id: str
    ts: float
    pattern_type: str
    sem_sha256: str
    layout_sha256: str
    sem_path: str
    layout_path: str
    folder: str
    polarity: int | None = None
    polarity_margin: float | None = None
    polarity_source: str | None = None


def feedback_rows(store: MonitorStore, folder: str | None = None) -> list[FeedbackRow]:
    """The feedback rows (oldest first), of the feedback store `folder` only when given."""
    f = t.feedback
    query = sa.select(*[f.c[k] for k in FeedbackRow.__dataclass_fields__]).order_by(f.c.ts, f.c.id)
    if folder is not None:
        query = query.where(f.c.folder == folder)
    with store.reading() as conn:
        return [FeedbackRow(**r._mapping) for r in conn.execute(query)]


def _row_of_sem(store: MonitorStore, sem_sha256: str) -> FeedbackRow | None:
    f = t.feedback
    query = sa.select(*[f.c[k] for k in FeedbackRow.__dataclass_fields__]).where(
        f.c.sem_sha256 == sem_sha256
    )
    with store.reading() as conn:
        row = conn.execute(query).first()
    return None if row is None else FeedbackRow(**row._mapping)


class FeedbackStore:
    def __init__(
        self,
        uri: str | Path,
        store: MonitorStore,
        sem_shape: tuple[int, int] = SEM_RAW_SHAPE,
        layout_shape: tuple[int, int] = TEMPLATE_SHAPE,
        check_alignment: bool = True,
        polarity_prior: int | str | None = None,
    ):
        """`check_alignment=False` skips the template-alignment QC (tests of what the loop and the
        fine-tune do with pairs that got into the store some other way). `polarity_prior`: the
        data set's polarity (+1/-1/bright/dark); None reads it from the pairs already stored."""
        self.uri = feedback_uri(uri)
        self.objects: Store = open_store(self.uri)
        self.store = store
        self.check_alignment = check_alignment
        self.polarity_prior = polarity_prior
        self.sem_shape = sem_shape
        self.layout_shape = layout_shape

    def validate(self, sem: np.ndarray, layout: np.ndarray) -> None:
        for name, img, shape, what in (
            ("sem", sem, self.sem_shape, "a raw SEM"),
            ("layout", layout, self.layout_shape, "a layout template"),
        ):
            if img.shape != shape:
                raise ImageRejected(
                    name,
                    "wrong_size",
                    f"expected {what} of {shape[1]}x{shape[0]} px, "
                    f"got {img.shape[1]}x{img.shape[0]}",
                )
        check_binary_layout(layout, "layout")

    def add(self, sem: np.ndarray, layout: np.ndarray, pattern_type: str) -> dict[str, Any]:
        """Validate and store one reviewed pair (objects first, row last); returns its row and
        `feedback_count`, the rows in the store once it was added."""
        check_pattern_type(pattern_type)
        self.validate(sem, layout)
        polarity = self._check_alignment(sem, layout, pattern_type) if self.check_alignment else {}
        sem_h, lay_h = sha256(sem), sha256(layout)
        old = _row_of_sem(self.store, sem_h)
        if old is not None:
            raise _duplicate(old, lay_h)
        for pixels, digest in ((sem, sem_h), (layout, lay_h)):
            self._put(object_key(digest), encode_png(pixels))
        row = FeedbackRow(
            id=f"fb-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}",
            ts=time.time(),
            pattern_type=pattern_type,
            sem_sha256=sem_h,
            layout_sha256=lay_h,
            sem_path=object_key(sem_h),
            layout_path=object_key(lay_h),
            folder=self.uri,
            **polarity,
        )
        try:
            count = self.store.add_feedback(**row.__dict__)
        except sa.exc.IntegrityError:  # another replica stored the same SEM meanwhile
            won = _row_of_sem(self.store, sem_h)
            if won is None:
                raise
            raise _duplicate(won, lay_h) from None
        return {**row.__dict__, "feedback_count": count}

    def check_writable(self) -> None:
        """Write a probe object now, or raise `StoreUnavailable` (the readiness report)."""
        self._put(PROBE, str(time.time()).encode())

    def _put(self, key: str, data: bytes) -> None:
        # written every time, even when present: re-posting an orphan rewrites its objects, so
        # they cannot be an old orphan that `fsck --repair` is about to delete
        try:
            self.objects.put_bytes(key, data)
        except (OSError, SemlayoutError) as err:
            reason = " ".join(str(err).split())[:300]
            raise StoreUnavailable(f"feedback store unavailable: {reason}") from None

    def _check_alignment(
        self, sem: np.ndarray, layout: np.ndarray, pattern_type: str
    ) -> dict[str, Any]:
        """Alignment QC with the data set's polarity prior; the pair's polarity fields."""
        from semlayout.data.align import AlignConfig, align_pair
        from semlayout.data.align_polarity import estimate_priors, fixed_prior
        from semlayout.data.alignment_table import read_polarity_columns

        cfg = AlignConfig()
        if self.polarity_prior is not None:
            prior = fixed_prior(self.polarity_prior)
        else:
            rows = feedback_rows(self.store, self.uri)
            accepted = read_polarity_columns(r.__dict__ for r in rows)
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
        margin = res.polarity_margin
        return {
            "polarity": res.polarity,
            "polarity_margin": None if margin is None else round(float(margin), 4),
            "polarity_source": res.polarity_source,
        }

    def count(self) -> int:
        """Pairs stored in this feedback store (rows naming it)."""
        f = t.feedback
        query = sa.select(sa.func.count()).select_from(f).where(f.c.folder == self.uri)
        with self.store.reading() as conn:
            return int(conn.execute(query).scalar_one())


def _duplicate(old: FeedbackRow, layout_sha256: str) -> DuplicatePair:
    same = "the same pair" if old.layout_sha256 == layout_sha256 else "this SEM"
    return DuplicatePair(
        f"{same} was already received as '{old.id}'; a SEM counts once (nothing was stored)"
    )
