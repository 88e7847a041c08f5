"""The monitoring database's tables, as SQLAlchemy Core tables (one definition for SQLite and
PostgreSQL). The database itself is created and upgraded by the Alembic migrations in
`semlayout.monitoring.migrations`; these tables are what the code reads and writes, and a
test checks that they match what the migrations build.

Tables (timestamps are UNIX seconds, UTC):
```
predictions        id, ts, direction, model_version, input_sha256, width, height,
                   output_png (kept as configured: none, a thumbnail or the full output),
                   output_bytes (its size, for the byte budget of the retention policy),
                   polarity (+1 / -1: the contrast polarity it was translated in; NULL in rows
                   made before it was recorded), confidence, predicted_quality,
                   confidence_reason, cohort, input_png (kept for review; issue 17),
                   profile (the tool / layer profile that answered; NULL: the shared network,
                   or a row made before profiles were recorded; issue 21)
inference_events   one row per request outcome: latency, forward time, status, error reason,
                   input/output statistics (JSON)
drift_events       one row per translated image: drifted, max |z|, KL, z-scores and features (JSON)
ground_truth       one row per prediction that later received its truth: l1, ssim, psnr, iou,
                   and what its confidence predicted (predicted_quality, confidence)
feedback           reviewed pairs posted to /v1/feedback: the row is written LAST, after both
                   images are in the feedback object store (`folder` + `sem_path`/`layout_path`);
                   one row per SEM (unique `sem_sha256`, the hash of its decoded pixels);
                   the pair's polarity as the aligner recorded it (NULL: QC skipped, or
                   stored before polarity was recorded)
trigger_decisions  what the continuous-learning loop decided, and when
loop_consumed      the reviewed pairs completed fine-tune runs have used (the loop's ledger)
meta               key/value (the readiness probe's last write)
layer_polarity     per layer label: its configured polarity (an admin's; NULL: none), the
                   pooled evidence of its images and the drift CUSUMs (`polarity_layer`)
```
Adding a column: a new migration in `migrations/versions/` (op.add_column) and the column
here; nothing else reads the schema.
"""

from __future__ import annotations

import sqlalchemy as sa

# SQLite: INTEGER PRIMARY KEY is the rowid; PostgreSQL: a BIGSERIAL
RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("direction", sa.Text, nullable=False),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("input_sha256", sa.Text, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("output_png", sa.LargeBinary),
    sa.Column("output_bytes", sa.Integer),
    sa.Column("polarity", sa.Integer),
    sa.Column("confidence", sa.Float),  # issue 17 (migration 0006): NULL = unknown
    sa.Column("predicted_quality", sa.Float),
    sa.Column("confidence_reason", sa.Text),
    sa.Column("confidence_signals", sa.Text),  # JSON {signal: value}
    sa.Column("cohort", sa.Text),
    sa.Column("input_png", sa.LargeBinary),
    sa.Column("profile", sa.Text),  # issue 21 (migration 0007): NULL = the shared network
    sa.Index("predictions_ts", "ts"),
    sa.Index("predictions_sha", "input_sha256"),
)

inference_events = sa.Table(
    "inference_events",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("endpoint", sa.Text, nullable=False),
    sa.Column("direction", sa.Text),
    sa.Column("prediction_id", sa.Text),
    sa.Column("model_version", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("http_status", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("forward_ms", sa.Float),
    sa.Column("batch_size", sa.Integer),
    sa.Column("input_stats", sa.Text),
    sa.Column("output_stats", sa.Text),
    sa.Index("inference_events_ts", "ts"),
)

drift_events = sa.Table(
    "drift_events",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("prediction_id", sa.Text),
    sa.Column("direction", sa.Text, nullable=False),
    sa.Column("drifted", sa.Integer, nullable=False),
    sa.Column("max_abs_z", sa.Float, nullable=False),
    sa.Column("kl", sa.Float, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("z", sa.Text, nullable=False),
    sa.Column("features", sa.Text, nullable=False),
    sa.Index("drift_events_dir", "direction", "id"),
)

ground_truth = sa.Table(
    "ground_truth",
    metadata,
    sa.Column("prediction_id", sa.Text, primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("direction", sa.Text, nullable=False),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("l1", sa.Float, nullable=False),
    sa.Column("ssim", sa.Float, nullable=False),
    sa.Column("psnr", sa.Float, nullable=False),
    sa.Column("iou", sa.Float, nullable=False),
    sa.Column("predicted_quality", sa.Float),  # what the prediction's confidence said
    sa.Column("confidence", sa.Float),
    sa.Index("ground_truth_dir", "direction", "ts"),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("pattern_type", sa.Text, nullable=False),
    sa.Column("sem_sha256", sa.Text, nullable=False),
    sa.Column("layout_sha256", sa.Text, nullable=False),
    sa.Column("sem_path", sa.Text, nullable=False),
    sa.Column("layout_path", sa.Text, nullable=False),
    sa.Column("folder", sa.Text, nullable=False),
    sa.Column("polarity", sa.Integer),  # +1 pattern bright, -1 dark (the aligner's; issue 16)
    sa.Column("polarity_margin", sa.Float),
    sa.Column("polarity_source", sa.Text),  # "pair" or "prior", as in alignment.csv
    sa.Index("feedback_ts", "ts"),
    sa.Index("feedback_sem_sha256", "sem_sha256", unique=True),
)

trigger_decisions = sa.Table(
    "trigger_decisions",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("fired", sa.Integer, nullable=False),
    sa.Column("run_id", sa.Text),
    sa.Column("details", sa.Text, nullable=False),
)

loop_consumed = sa.Table(
    "loop_consumed",
    metadata,
    sa.Column("source", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("pair_id", sa.Text, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("qc_failed", sa.Integer),
    sa.Column("ts", sa.Float, nullable=False),
)

layer_polarity = sa.Table(
    "layer_polarity",
    metadata,
    sa.Column("layer", sa.Text, primary_key=True),
    sa.Column("configured", sa.Integer),
    sa.Column("pooled", sa.Float, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("s_dark", sa.Float, nullable=False),
    sa.Column("s_bright", sa.Float, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
)

# the tables `MonitorStore.count` answers for
COUNTED = (
    "predictions",
    "inference_events",
    "drift_events",
    "ground_truth",
    "feedback",
    "trigger_decisions",
    "loop_consumed",
)
