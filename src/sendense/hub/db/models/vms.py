"""What is backed up: the vCenters the hub reads from, their VMs (by vCenter and
instance UUID) and the VMs' disks."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from sendense.hub.db.models.base import Base, UtcDateTime, new_id, utcnow


class Vcenter(Base):
    """A vCenter the hub backs up from, through one node."""

    __tablename__ = "vcenters"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    host: Mapped[str] = mapped_column(String(255), unique=True)
    username: Mapped[str] = mapped_column(String(255))
    password_sealed: Mapped[str] = mapped_column(Text)
    thumbprint: Mapped[str | None] = mapped_column(String(128))
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Vm(Base):
    """A VM is (vCenter, instance UUID), not its name: a VM deleted and re-created
    under its name, or one of the same name on another vCenter, is another row and
    another chain; a renamed VM keeps its row. The name is what it was last called
    (not unique); the repository directory is named by `id`."""

    __tablename__ = "vms"
    __table_args__ = (UniqueConstraint("vcenter_id", "vmware_uuid", name="uq_vms_vcenter_uuid"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255), index=True)
    # VMware instance UUID when known (None: not backed up through a vCenter yet,
    # or prepared from outside without one).
    vmware_uuid: Mapped[str | None] = mapped_column(String(64))
    # The vCenter it lives on; None for a VM prepared from outside without one, or
    # one from before 0011 whose vCenter could not be told (its next backup from a
    # vCenter adopts it).
    vcenter_id: Mapped[str | None] = mapped_column(ForeignKey("vcenters.id"))
    node_id: Mapped[str | None] = mapped_column(ForeignKey("nodes.id"))
    # The VM's lock: set by a conditional UPDATE (`WHERE active_job_id IS NULL`),
    # atomic on SQLite and PostgreSQL alike. One job per VM at a time.
    active_job_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    disks: Mapped[list[VmDisk]] = relationship(back_populates="vm", order_by="VmDisk.disk_key")


class VmDisk(Base):
    __tablename__ = "vm_disks"
    __table_args__ = (UniqueConstraint("vm_id", "disk_key", name="uq_vm_disks_vm_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"))
    # The real VirtualDisk.key (2000, 2016, 16000, 31000...), never index + 2000.
    disk_key: Mapped[int] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(255))
    capacity_bytes: Mapped[int] = mapped_column(BigInteger)
    datastore_path: Mapped[str | None] = mapped_column(Text)
    removed: Mapped[bool] = mapped_column(default=False)

    vm: Mapped[Vm] = relationship(back_populates="disks")
