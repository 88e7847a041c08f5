"""A layer's polarity as pooled evidence (issue 16): `layer_polarity`, one row per layer.

`configured` is an admin's word (PUT /v1/layers/{layer}/polarity; NULL: none), `pooled` the
capped sum of its images' clipped log-odds of bright, `n` how many images were pooled,
`s_dark` / `s_bright` the CUSUMs of the evidence for each polarity that the drift monitor
judges (`semlayout.polarity_layer`). In the store so replicas share it and a restart keeps it.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "layer_polarity",
        sa.Column("layer", sa.Text, primary_key=True),
        sa.Column("configured", sa.Integer),
        sa.Column("pooled", sa.Float, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("s_dark", sa.Float, nullable=False),
        sa.Column("s_bright", sa.Float, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("layer_polarity")
