"""The polarity of each feedback pair, as the aligner recorded it (issue 16).

`feedback.polarity` (+1 pattern bright, -1 dark), `polarity_margin` (the z-score by which it
beat the other polarity) and `polarity_source` ("pair": the pair's own fit, "prior": the data
set's polarity), the columns of `alignment.csv`. Rows written before stay NULL.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("feedback", sa.Column("polarity", sa.Integer))
    op.add_column("feedback", sa.Column("polarity_margin", sa.Float))
    op.add_column("feedback", sa.Column("polarity_source", sa.Text))


def downgrade() -> None:
    op.drop_column("feedback", "polarity_source")
    op.drop_column("feedback", "polarity_margin")
    op.drop_column("feedback", "polarity")
