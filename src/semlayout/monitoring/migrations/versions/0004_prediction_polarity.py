"""The contrast polarity of each prediction (+1 pattern bright, -1 dark; issue 16).

`predictions.polarity`: the polarity the image was translated in (given by the caller or the
layer, or decided by `polarity=auto`), so the monitoring summary can show a stream's polarity
mix. Rows written before it stay NULL ("unknown" in the summary).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("predictions", sa.Column("polarity", sa.Integer))


def downgrade() -> None:
    op.drop_column("predictions", "polarity")
