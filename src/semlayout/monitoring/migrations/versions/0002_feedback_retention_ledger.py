"""Feedback rows unique per SEM, output sizes for the byte budget, the loop's ledger.

- `feedback.sem_sha256` unique: the row is the commit point of a feedback post (written after
  its images), and a SEM counts once; duplicates an older version let in are dropped first
  (the oldest row of each SEM stays).
- `predictions.output_bytes`: the stored output's size, so the retention policy can keep the
  stored outputs under a byte budget without reading them.
- `loop_consumed`: the loop's ledger of consumed reviewed pairs, which older versions created
  on first use (kept as it is when present).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    op.add_column("predictions", sa.Column("output_bytes", sa.Integer))
    op.execute(
        "UPDATE predictions SET output_bytes = length(output_png) WHERE output_png IS NOT NULL"
    )
    op.execute(
        "DELETE FROM feedback WHERE id NOT IN " "(SELECT MIN(id) FROM feedback GROUP BY sem_sha256)"
    )
    op.create_index("feedback_sem_sha256", "feedback", ["sem_sha256"], unique=True)
    if not inspector.has_table("loop_consumed"):
        op.create_table(
            "loop_consumed",
            sa.Column("source", sa.Text, primary_key=True),
            sa.Column("key", sa.Text, primary_key=True),
            sa.Column("pair_id", sa.Text, nullable=False),
            sa.Column("run_id", sa.Text, nullable=False),
            sa.Column("qc_failed", sa.Integer),
            sa.Column("ts", sa.Float, nullable=False),
        )


def downgrade() -> None:
    op.drop_table("loop_consumed")
    op.drop_index("feedback_sem_sha256", "feedback")
    op.drop_column("predictions", "output_bytes")
