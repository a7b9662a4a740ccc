"""VM identity: a VM is (vCenter, instance UUID), its name no longer unique

Existing rows keep their id, so their repository directories and chains stay as
they are. A VM whose vCenter can be told (its node reaches exactly one vCenter,
or the hub has exactly one) gets it; the others keep None and the next backup
from a vCenter adopts them. vmware_uuid is kept as it was.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 20:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("vcenter_id", sa.String(32), nullable=True))
        batch.create_foreign_key("fk_vms_vcenter_id_vcenters", "vcenters", ["vcenter_id"], ["id"])
        batch.drop_constraint("uq_vms_name", type_="unique")
        batch.create_index("ix_vms_name", ["name"])
        batch.create_unique_constraint("uq_vms_vcenter_uuid", ["vcenter_id", "vmware_uuid"])
    _fill_vcenters()


def _fill_vcenters() -> None:
    conn = op.get_bind()
    vcenters = conn.execute(sa.text("SELECT id, node_id FROM vcenters")).all()
    by_node: dict[str, list[str]] = {}
    for vcenter_id, node_id in vcenters:
        by_node.setdefault(node_id, []).append(vcenter_id)
    only = vcenters[0][0] if len(vcenters) == 1 else None
    for vm_id, node_id in conn.execute(sa.text("SELECT id, node_id FROM vms")).all():
        of_node = by_node.get(node_id, []) if node_id else []
        chosen = of_node[0] if len(of_node) == 1 else only
        if chosen is not None:
            conn.execute(
                sa.text("UPDATE vms SET vcenter_id = :vc WHERE id = :vm"),
                {"vc": chosen, "vm": vm_id},
            )


def downgrade() -> None:
    # Fails while two rows share a name: the old schema cannot hold them.
    with op.batch_alter_table("vms") as batch:
        batch.drop_constraint("uq_vms_vcenter_uuid", type_="unique")
        batch.drop_index("ix_vms_name")
        batch.create_unique_constraint("uq_vms_name", ["name"])
        batch.drop_constraint("fk_vms_vcenter_id_vcenters", type_="foreignkey")
        batch.drop_column("vcenter_id")
