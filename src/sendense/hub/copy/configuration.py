"""The hub's own configuration in each copy target's bucket: policies and their
assignments, vCenters (with their passwords: the object is sealed with the
target's key), the nodes' names, users and their roles. Written whenever it
changed (checked on every sweep), read back by `copy import` on a new hub.

On a new hub nodes enroll again (the hub's tunnel host key is new); a vCenter is
registered again once the node it was reached through has enrolled under the
same name; users keep their password hashes and roles; a TOTP secret does not
travel (users enroll a second factor again)."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from sqlalchemy import select

from sendense.hub.auth.secrets import SecretBox
from sendense.hub.copy.sealing import open_bytes, seal_bytes
from sendense.hub.copy.targets import OpenTarget
from sendense.hub.db.database import Database
from sendense.hub.db.models import CopyTarget, Node, Policy, PolicyAssignment, User, Vcenter

log = logging.getLogger(__name__)
CONFIG = "hub-config"
_POLICY_FIELDS = (
    "keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly",
    "max_chain_length", "schedule",
)  # fmt: skip


def snapshot(db: Database, box: SecretBox) -> dict[str, Any]:
    with db.session() as s:
        nodes = {n.id: n.name for n in s.scalars(select(Node))}
        return {
            "format": 1,
            "policies": [
                {
                    "name": p.name,
                    **{f: getattr(p, f) for f in _POLICY_FIELDS},
                    "assignments": sorted(
                        ([a.kind, a.value] for a in p.assignments), key=lambda a: (a[0], a[1])
                    ),
                }
                for p in s.scalars(select(Policy).order_by(Policy.name))
            ],
            "vcenters": [
                {
                    "host": v.host,
                    "user": v.username,
                    "password": box.open(v.password_sealed),
                    "thumbprint": v.thumbprint,
                    "node": nodes.get(v.node_id),
                }
                for v in s.scalars(select(Vcenter).order_by(Vcenter.host))
            ],
            "nodes": sorted(n.name for n in s.scalars(select(Node).where(Node.revoked.is_(False)))),
            "users": [
                {"name": u.name, "role": u.role, "password_hash": u.password_hash}
                for u in s.scalars(select(User).order_by(User.name))
            ],
        }


def upload_if_changed(db: Database, box: SecretBox, target: OpenTarget) -> bool:
    """The configuration into the bucket when it differs from the last written."""
    body = json.dumps(snapshot(db, box), sort_keys=True).encode()
    digest = hashlib.sha256(body).hexdigest()
    with db.session() as s:
        row = s.get_one(CopyTarget, target.info.id)
        if row.config_digest == digest:
            return False
    target.bucket.put(CONFIG, seal_bytes(target.key, CONFIG, body), target.bucket.retain_until())
    with db.session() as s:
        s.get_one(CopyTarget, target.info.id).config_digest = digest
    log.info("hub configuration written to copy target %s", target.info.name)
    return True


def restore(db: Database, box: SecretBox, target: OpenTarget) -> dict[str, int]:
    """What a bucket's configuration has and this hub lacks, added (nothing this hub
    has is changed). Returns how many of each were added."""
    if CONFIG not in target.bucket.names(CONFIG):
        return {"policies": 0, "vcenters": 0, "users": 0}
    config = json.loads(open_bytes(target.key, CONFIG, target.bucket.get(CONFIG)))
    added = {"policies": 0, "vcenters": 0, "users": 0}
    with db.session() as s:
        for p in config.get("policies", []):
            if s.scalars(select(Policy).where(Policy.name == p["name"])).first() is not None:
                continue
            policy = Policy(name=p["name"], **{f: p.get(f) for f in _POLICY_FIELDS})
            policy.keep_last = p.get("keep_last") or 0
            s.add(policy)
            s.flush()
            for kind, value in p.get("assignments", []):
                taken = s.scalars(
                    select(PolicyAssignment).where(
                        PolicyAssignment.kind == kind, PolicyAssignment.value == value
                    )
                ).first()
                if taken is None:
                    s.add(PolicyAssignment(policy_id=policy.id, kind=kind, value=value))
            added["policies"] += 1
        nodes = {n.name: n.id for n in s.scalars(select(Node).where(Node.revoked.is_(False)))}
        for v in config.get("vcenters", []):
            known = s.scalars(select(Vcenter).where(Vcenter.host == v["host"])).first()
            if known is not None or v.get("node") not in nodes:
                continue  # its node has not enrolled here (yet): `copy import` again later
            s.add(
                Vcenter(
                    host=v["host"],
                    username=v["user"],
                    password_sealed=box.seal(v["password"]),
                    thumbprint=v.get("thumbprint"),
                    node_id=nodes[v["node"]],
                )
            )
            added["vcenters"] += 1
        for u in config.get("users", []):
            if s.scalars(select(User).where(User.name == u["name"])).first() is not None:
                continue
            s.add(User(name=u["name"], role=u["role"], password_hash=u["password_hash"]))
            added["users"] += 1
    return added
