"""`sendense repo check`: does a repository hold what the database says, and
nothing else?

Three kinds of finding, each per file or layer:

* `orphan_file`: a QCOW2 file in the repository that no restore point uses.
  Repair removes it (no row points at it, so no restore can need it).
* `missing_file`: a layer of a complete point whose file is gone. Repair marks
  the layer invalid, with every point built on it: the next backup of the disk
  is a full, and nothing restores from a hole.
* `wrong_backing`: a layer whose QCOW2 header names another parent file than
  the database's chain (or none where it should have one, or one it cannot
  read). Repair marks it invalid the same way; rewriting a header could show
  another point's data, so it is never done.

Repair runs only while no task is active on the hub: a backup's new file, or a
merge's layer, could otherwise be taken for a finding.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from sendense.common.errors import Conflict, ToolFailed
from sendense.hub.db.database import Database
from sendense.hub.db.models import (
    ACTIVE_JOB_STATES,
    Job,
    PointStatus,
    RestorePoint,
    RestorePointDisk,
)
from sendense.hub.repository.repositories import RepositoryInfo, RepositoryService
from sendense.hub.verify.verifier import record_layer_results

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    kind: str  # orphan_file | missing_file | wrong_backing
    path: str  # relative to the repository
    restore_point_id: str | None
    layer_id: str | None
    detail: str
    repaired: bool = False


@dataclass
class AuditReport:
    repository: str
    files: int = 0
    layers: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return all(f.repaired for f in self.findings)


class RepositoryAudit:
    def __init__(self, db: Database, repos: RepositoryService) -> None:
        self.db = db
        self.repos = repos

    def run(self, ref: str | None = None, repair: bool = False) -> AuditReport:
        repo = self.repos.get(ref)  # an unmounted repository is refused, not "all missing"
        if repair:
            self._refuse_while_busy()
        report = AuditReport(repo.name)
        layers = self._layers(repo)
        report.layers = len(layers)
        on_disk = {
            p.relative_to(repo.path).as_posix() for p in repo.path.rglob("*.qcow2") if p.is_file()
        }
        report.files = len(on_disk)
        used = {row.file_path for row in layers.values()}
        for relative in sorted(on_disk - used):
            report.findings.append(
                Finding("orphan_file", relative, None, None, "no restore point uses it")
            )
        for layer in layers.values():
            finding = self._check_layer(repo, layer, layers, on_disk)
            if finding is not None:
                report.findings.append(finding)
        if repair:
            report.findings = self._repair(repo, report.findings)
        for f in report.findings:
            log.warning("repository %s: %s %s %s", repo.name, f.kind, f.path, f.detail)
        return report

    def _refuse_while_busy(self) -> None:
        with self.db.session() as s:
            busy = s.scalars(select(Job.id).where(Job.state.in_(ACTIVE_JOB_STATES))).first()
        if busy is not None:
            raise Conflict(f"task {busy} is running: repair when no task runs")

    def _layers(self, repo: RepositoryInfo) -> dict[str, RestorePointDisk]:
        with self.db.session() as s:
            rows = s.scalars(
                select(RestorePointDisk)
                .join(RestorePoint, RestorePoint.id == RestorePointDisk.restore_point_id)
                .where(RestorePoint.repository_id == repo.id)
            ).all()
            return {row.id: row for row in rows}

    def _check_layer(
        self,
        repo: RepositoryInfo,
        layer: RestorePointDisk,
        layers: dict[str, RestorePointDisk],
        on_disk: set[str],
    ) -> Finding | None:
        if layer.status == PointStatus.INCOMPLETE:
            return None  # a backup still writing it; start-up cleans up a crashed one
        relative = layer.file_path
        if relative not in on_disk:
            if layer.status == PointStatus.INVALID:
                return None  # known bad already
            return Finding(
                "missing_file", relative, layer.restore_point_id, layer.id, "file is gone"
            )
        path = self.repos.resolve(repo, relative)
        parent = layers.get(layer.parent_id) if layer.parent_id else None
        want = self.repos.resolve(repo, parent.file_path) if parent else None
        try:
            backing = self.repos.qemu_img.info(path, force_share=True).get("backing-filename")
        except ToolFailed as exc:
            return Finding("wrong_backing", relative, layer.restore_point_id, layer.id, exc.message)
        have = (path.parent / backing).resolve() if backing else None
        if have == want or layer.status == PointStatus.INVALID:
            return None
        return Finding(
            "wrong_backing",
            relative,
            layer.restore_point_id,
            layer.id,
            f"header names {_show(have, repo.path)}, the chain {_show(want, repo.path)}",
        )

    def _repair(self, repo: RepositoryInfo, findings: list[Finding]) -> list[Finding]:
        done: list[Finding] = []
        invalid: dict[str, str | None] = {}
        for f in findings:
            if f.kind == "orphan_file":
                self.repos.remove_image(repo, f.path)
            elif f.layer_id is not None:
                invalid[f.layer_id] = f"repo check: {f.kind.replace('_', ' ')}: {f.detail}"
            done.append(Finding(f.kind, f.path, f.restore_point_id, f.layer_id, f.detail, True))
        if invalid:
            record_layer_results(self.db, invalid)
        return done


def _show(path: Path | None, root: Path) -> str:
    if path is None:
        return "no parent"
    return os.path.relpath(path, root)
