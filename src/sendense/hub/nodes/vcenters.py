"""vCenters the hub backs up from: each reached through one node; the password sealed."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from sendense.common.contract import VcenterLogin
from sendense.common.errors import Conflict, InvalidInput, NotFound
from sendense.hub.auth.secrets import SecretBox
from sendense.hub.db.database import Database
from sendense.hub.db.models import Node, Vcenter


@dataclass(frozen=True)
class VcenterInfo:
    id: str
    host: str
    username: str
    thumbprint: str | None
    node: str


class VcenterService:
    def __init__(self, db: Database, box: SecretBox) -> None:
        self.db = db
        self.box = box

    def add(
        self, host: str, user: str, password: str, node: str, thumbprint: str | None
    ) -> VcenterInfo:
        if not password:
            raise InvalidInput("the vCenter password is empty")
        sealed = self.box.seal(password)
        try:
            with self.db.session() as s:
                row = s.scalars(select(Node).where(Node.name == node)).first()
                if row is None or row.revoked:
                    raise NotFound(f"no enrolled node named {node!r}")
                vc = Vcenter(
                    host=host,
                    username=user,
                    password_sealed=sealed,
                    thumbprint=thumbprint,
                    node_id=row.id,
                )
                s.add(vc)
                s.flush()
                return VcenterInfo(vc.id, host, user, thumbprint, node)
        except IntegrityError as exc:
            raise Conflict(f"vCenter {host} is registered already") from exc

    def change_login(self, host: str, user: str | None, password: str) -> VcenterInfo:
        """A new password (and user) for a registered vCenter: the way to rotate it.
        Backups started from now on use it."""
        if not password:
            raise InvalidInput("the vCenter password is empty")
        sealed = self.box.seal(password)
        with self.db.session() as s:
            found = s.execute(select(Vcenter, Node.name).join(Node).where(Vcenter.host == host))
            row = found.first()
            if row is None:
                raise NotFound(f"no vCenter {host!r} is registered")
            vc, node = row
            vc.password_sealed = sealed
            if user:
                vc.username = user
            return VcenterInfo(vc.id, vc.host, vc.username, vc.thumbprint, node)

    def list(self) -> list[VcenterInfo]:
        with self.db.session() as s:
            rows = s.execute(select(Vcenter, Node.name).join(Node).order_by(Vcenter.host)).all()
            return [VcenterInfo(v.id, v.host, v.username, v.thumbprint, n) for v, n in rows]

    def thumbprint(self, host: str) -> str | None:
        """The certificate thumbprint registered for `host` (host[:port], as registered)."""
        with self.db.session() as s:
            return s.scalars(select(Vcenter.thumbprint).where(Vcenter.host == host)).first()

    def login(self, host: str | None) -> tuple[VcenterLogin, str]:
        """The login for `host` (or the only vCenter) and the name of its node: the
        host with its port as registered, the user, the sealed password, the thumbprint."""
        with self.db.session() as s:
            query = select(Vcenter, Node.name).join(Node)
            if host:
                query = query.where(Vcenter.host == host)
            rows = s.execute(query).all()
        if not rows:
            raise NotFound(
                f"no vCenter {host!r} is registered"
                if host
                else "no vCenter is registered: `sendense vcenter add`"
            )
        if len(rows) > 1:
            raise InvalidInput("several vCenters are registered: name one")
        vc, node = rows[0]
        login = VcenterLogin(
            vcenter_host=vc.host,
            vcenter_user=vc.username,
            vcenter_password=SecretStr(self.box.open(vc.password_sealed)),
            vcenter_thumbprint=vc.thumbprint,
        )
        return login, node
