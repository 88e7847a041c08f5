"""`alignment.csv`: the aligner's verdict per pair, written by `align_folder`, read everywhere else.

```
id,x,y,score,qc_pass,reason,confidence,x_sub,y_sub,polarity,n_equivalent,
polarity_margin,polarity_source,rotation_deg,scale
```
One row per input pair, rejected ones included (`qc_pass` false, `reason` says why;
x, y and score are empty when no match was attempted). `polarity` is 1 (pattern bright) or
-1 (dark), `polarity_margin` (>= 0) the z-score by which it beat the other polarity, and
`polarity_source` "pair" (this pair's own fit) or "prior" (the data set's polarity); all
three are empty only for refused pairs. `rotation_deg` and `scale` are the field distortion
undone before matching (0 and 1: none): x, y are then in the SEM resampled into the
layout's frame (`semlayout.data.field_distortion`), which is what the aligned crop shows.
The first six columns are required when reading; the others (and any a caller adds) are
kept as text in `AlignmentRow.extra`. `qc_pass` is a boolean with one spelling rule for
every reader: true/false, 1/0 or yes/no, any case; anything else is an error naming the row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from semlayout.errors import SemlayoutError

if TYPE_CHECKING:
    from semlayout.data.align import AlignResult

ALIGNMENT_FILE = "alignment.csv"
ALIGNMENT_COLUMNS = (
    "id",
    "x",
    "y",
    "score",
    "qc_pass",
    "reason",
    "confidence",
    "x_sub",
    "y_sub",
    "polarity",
    "n_equivalent",
    "polarity_margin",
    "polarity_source",
    "rotation_deg",
    "scale",
)
REQUIRED_ALIGNMENT_COLUMNS = ALIGNMENT_COLUMNS[:6]
# what the aligned folder's manifest (and the intake and feedback manifests) carry per pair
POLARITY_COLUMNS = ("polarity", "polarity_margin", "polarity_source")
# an aligned (or intake) manifest keeps its input's own `polarity` column under this name
DECLARED_POLARITY = "declared_polarity"
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


@dataclass(frozen=True)
class AlignmentRow:
    """One row of `alignment.csv`, typed (x, y, score are None when left empty)."""

    id: str
    x: int | None
    y: int | None
    score: float | None
    qc_pass: bool
    reason: str
    extra: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- writing


def _fmt(v: Any, nd: int) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def result_row(pair_id: str, result: AlignResult) -> dict[str, str]:
    """The `alignment.csv` row of one `align_pair` result (booleans as true/false)."""
    d = asdict(result)
    digits = {"x_sub": 3, "y_sub": 3, "rotation_deg": 4, "scale": 6}
    out = {"id": pair_id}
    for c in ALIGNMENT_COLUMNS[1:]:
        out[c] = _fmt(d[c], digits.get(c, 4))
    return out


def polarity_columns(result: AlignResult) -> dict[str, str]:
    """`POLARITY_COLUMNS` of one result, formatted as in `alignment.csv`."""
    return {c: _fmt(getattr(result, c), 4) for c in POLARITY_COLUMNS}


def write_alignment_table(path: Path, rows: Iterable[dict[str, str]]) -> None:
    """Write `rows` (from `result_row`) with the `ALIGNMENT_COLUMNS` header."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(ALIGNMENT_COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path.write_text(buf.getvalue())


# ----------------------------------------------------------------------------- reading


def parse_bool(value: str | None, path: Path, row_id: str, column: str = "qc_pass") -> bool:
    """true/false, 1/0, yes/no (any case, surrounding spaces ignored); else a SemlayoutError."""
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SemlayoutError(
        f"{path}: row '{row_id}': {column} is {value!r}; expected true/false, 1/0 or yes/no"
    )


def _parse_number(
    value: str | None, kind: type[int] | type[float], path: Path, row_id: str, column: str
) -> Any:
    text = (value or "").strip()
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise SemlayoutError(
            f"{path}: row '{row_id}': {column} is {value!r}; expected {kind.__name__} or empty"
        ) from None


def _parse_row(raw: dict[str, str | None], path: Path) -> AlignmentRow:
    pid = (raw.get("id") or "").strip()
    return AlignmentRow(
        id=pid,
        x=_parse_number(raw.get("x"), int, path, pid, "x"),
        y=_parse_number(raw.get("y"), int, path, pid, "y"),
        score=_parse_number(raw.get("score"), float, path, pid, "score"),
        qc_pass=parse_bool(raw.get("qc_pass"), path, pid),
        reason=(raw.get("reason") or "").strip(),
        extra={
            k: v or ""
            for k, v in raw.items()
            if k is not None and k not in REQUIRED_ALIGNMENT_COLUMNS
        },
    )


def read_alignment_table(path: str | Path) -> list[AlignmentRow]:
    """Parse `alignment.csv` (or a folder holding it) into typed rows.

    A file that cannot be read, lacks a required column or holds a malformed value is a
    `SemlayoutError` naming the file (and the row and value).
    """
    path = Path(path)
    if path.is_dir():
        path = path / ALIGNMENT_FILE
    try:
        # utf-8-sig: a spreadsheet export starts with a byte-order mark that would rename 'id'
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise SemlayoutError(f"{path}: cannot read alignment table ({err})") from None
    reader = csv.DictReader(io.StringIO(text))
    reader.fieldnames = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_ALIGNMENT_COLUMNS if c not in reader.fieldnames]
    if missing:
        raise SemlayoutError(
            f"{path}: missing column(s) {', '.join(missing)}; "
            f"expected {','.join(REQUIRED_ALIGNMENT_COLUMNS)}"
        )
    try:
        return [_parse_row(raw, path) for raw in reader]
    except csv.Error as err:
        raise SemlayoutError(f"{path}: not a CSV table ({err})") from None


def read_polarity_columns(rows: Iterable[Mapping[str, Any]]) -> list[tuple[str, Any]]:
    """(pattern_type, record) pairs from rows of QC-passed pairs that carry `POLARITY_COLUMNS`
    (as text or numbers; rows without them, or with unreadable values, are skipped): what
    `estimate_priors` reads when pairs arrive one at a time (the feedback store's rows)."""
    out: list[tuple[str, Any]] = []
    for row in rows:
        cell = {c: str(row.get(c) if row.get(c) is not None else "").strip() for c in row}
        try:
            pol = int(cell.get("polarity", ""))
            margin = float(cell.get("polarity_margin", ""))
        except ValueError:
            continue
        rec = SimpleNamespace(
            qc_pass=True,
            polarity=pol,
            polarity_margin=margin,
            polarity_source=cell.get("polarity_source", ""),
        )
        out.append((cell.get("pattern_type", ""), rec))
    return out


def failed_ids(rows: Iterable[AlignmentRow]) -> set[str]:
    """Ids of the rows whose QC failed."""
    return {r.id for r in rows if not r.qc_pass}
