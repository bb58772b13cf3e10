"""A tag's folded name holds whatever folding a name of 50 characters makes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

app.models.fold_tag applies NFKC, which makes up to 18 characters of one (U+FDFA, in
composed or decomposed form): a valid name of 50 characters folds to up to 900, which
varchar(200) refused (tests/routes/test_tags.py). Raising a varchar's limit rewrites no
row and rebuilds no index.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column(
        "tags", "folded", type_=sa.String(900), existing_type=sa.String(200), existing_nullable=False
    )


def downgrade() -> None:
    # Fails, rather than cuts a name, if a tag's folded name is longer than 200.
    op.alter_column(
        "tags", "folded", type_=sa.String(200), existing_type=sa.String(900), existing_nullable=False
    )
