"""node system users and unique node keys: each node logs in to the tunnel as
its own system user (`nodes.system_user`, named from its id); the accounts a hub
made on its machine are recorded in `node_accounts` (per hub: a shared database
serves hubs on several machines); a node key's fingerprint is unique.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A key used by a revoked node and again by a later one (allowed before):
    # the revoked node's fingerprint goes, the unique constraint can be made.
    op.execute(
        "UPDATE nodes SET key_fingerprint = NULL WHERE revoked AND key_fingerprint IN "
        "(SELECT key_fingerprint FROM nodes GROUP BY key_fingerprint HAVING COUNT(*) > 1)"
    )
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("system_user", sa.String(32), nullable=True))
        batch.create_unique_constraint("uq_nodes_key_fingerprint", ["key_fingerprint"])
        batch.create_unique_constraint("uq_nodes_system_user", ["system_user"])
    op.execute("UPDATE nodes SET system_user = 'sendense-n-' || substr(id, 1, 12)")
    op.create_table(
        "node_accounts",
        sa.Column("hub_id", sa.String(32), nullable=False),
        sa.Column("user_name", sa.String(32), nullable=False),
        sa.Column("node_id", sa.String(32), nullable=False),
        sa.Column("uid", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("hub_id", "user_name", name=op.f("pk_node_accounts")),
    )


def downgrade() -> None:
    op.drop_table("node_accounts")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_constraint("uq_nodes_system_user", type_="unique")
        batch.drop_constraint("uq_nodes_key_fingerprint", type_="unique")
        batch.drop_column("system_user")
