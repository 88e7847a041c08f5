"""The confidence of each prediction, its cohort, the input kept for review, and predicted vs
true quality on the ground truth (issue 17).

`predictions.confidence` (P(quality >= the calibration's good threshold), NULL: unknown, the
model version has no calibration), `predicted_quality` (predicted IoU for sem2layout, SSIM for
layout2sem), `confidence_reason` (why a confidence is the lowest, or unknown),
`confidence_signals` (JSON: the signals it rests on, for the population-drift test), `cohort` (the
caller's pattern family / tool / client label, when given), `input_png` (the input as PNG,
kept for review candidates so `semlayout review export` can hand the SEM to a labeler).
`ground_truth.predicted_quality` / `confidence`: what the prediction said, copied when its
truth arrives, so the calibration error over time outlives the prediction rows' retention.
Rows written before stay NULL.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("predictions", sa.Column("confidence", sa.Float))
    op.add_column("predictions", sa.Column("predicted_quality", sa.Float))
    op.add_column("predictions", sa.Column("confidence_reason", sa.Text))
    op.add_column("predictions", sa.Column("confidence_signals", sa.Text))
    op.add_column("predictions", sa.Column("cohort", sa.Text))
    op.add_column("predictions", sa.Column("input_png", sa.LargeBinary))
    op.add_column("ground_truth", sa.Column("predicted_quality", sa.Float))
    op.add_column("ground_truth", sa.Column("confidence", sa.Float))
    op.create_index("predictions_sha", "predictions", ["input_sha256"])


def downgrade() -> None:
    op.drop_index("predictions_sha", "predictions")
    op.drop_column("ground_truth", "confidence")
    op.drop_column("ground_truth", "predicted_quality")
    for col in (
        "input_png",
        "cohort",
        "confidence_signals",
        "confidence_reason",
        "predicted_quality",
        "confidence",
    ):
        op.drop_column("predictions", col)
