"""The schema as it was before migrations existed (the SQLite DDL of semlayout 0.1.0).

Creates only what is missing, so an older SQLite file is adopted as it is.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


Table = tuple[list[sa.Column], list[tuple[str, list[str]]]]  # (columns, [(index, columns)])


def _tables() -> dict[str, Table]:
    """name -> its columns and indexes, as 0.1.0 created them."""
    return {**_request_tables(), **_loop_tables()}


def _request_tables() -> dict[str, Table]:
    return {
        "meta": (
            [
                sa.Column("key", sa.Text, primary_key=True),
                sa.Column("value", sa.Text, nullable=False),
            ],
            [],
        ),
        "predictions": (
            [
                sa.Column("id", sa.Text, primary_key=True),
                sa.Column("ts", sa.Float, nullable=False),
                sa.Column("direction", sa.Text, nullable=False),
                sa.Column("model_version", sa.Text, nullable=False),
                sa.Column("input_sha256", sa.Text, nullable=False),
                sa.Column("width", sa.Integer, nullable=False),
                sa.Column("height", sa.Integer, nullable=False),
                sa.Column("output_png", sa.LargeBinary),
            ],
            [("predictions_ts", ["ts"])],
        ),
        "inference_events": (
            [
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
            ],
            [("inference_events_ts", ["ts"])],
        ),
        "drift_events": (
            [
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
            ],
            [("drift_events_dir", ["direction", "id"])],
        ),
        "ground_truth": (
            [
                sa.Column("prediction_id", sa.Text, primary_key=True),
                sa.Column("ts", sa.Float, nullable=False),
                sa.Column("direction", sa.Text, nullable=False),
                sa.Column("model_version", sa.Text, nullable=False),
                sa.Column("l1", sa.Float, nullable=False),
                sa.Column("ssim", sa.Float, nullable=False),
                sa.Column("psnr", sa.Float, nullable=False),
                sa.Column("iou", sa.Float, nullable=False),
            ],
            [("ground_truth_dir", ["direction", "ts"])],
        ),
    }


def _loop_tables() -> dict[str, Table]:
    return {
        "feedback": (
            [
                sa.Column("id", sa.Text, primary_key=True),
                sa.Column("ts", sa.Float, nullable=False),
                sa.Column("pattern_type", sa.Text, nullable=False),
                sa.Column("sem_sha256", sa.Text, nullable=False),
                sa.Column("layout_sha256", sa.Text, nullable=False),
                sa.Column("sem_path", sa.Text, nullable=False),
                sa.Column("layout_path", sa.Text, nullable=False),
                sa.Column("folder", sa.Text, nullable=False),
            ],
            [("feedback_ts", ["ts"])],
        ),
        "trigger_decisions": (
            [
                sa.Column("id", RowId, primary_key=True, autoincrement=True),
                sa.Column("ts", sa.Float, nullable=False),
                sa.Column("fired", sa.Integer, nullable=False),
                sa.Column("run_id", sa.Text),
                sa.Column("details", sa.Text, nullable=False),
            ],
            [],
        ),
    }


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for name, (columns, indexes) in _tables().items():
        if inspector.has_table(name):
            continue
        op.create_table(name, *columns)
        for index, cols in indexes:
            op.create_index(index, name, cols)


def downgrade() -> None:
    for name in reversed(list(_tables())):
        op.drop_table(name)
