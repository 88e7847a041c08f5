"""The tool / layer profile that answered each prediction (issue 21).

`predictions.profile`: the profile (`semlayout.profiles`) the served model translated the
image with, chosen by the request's `layer` label when the model learned that profile; NULL
for the shared network and for rows written before it was recorded.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("predictions", sa.Column("profile", sa.Text))


def downgrade() -> None:
    op.drop_column("predictions", "profile")
