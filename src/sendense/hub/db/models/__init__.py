"""Tables of the hub. State that must survive a crash lives here, never only in memory.

One module per area, every table on the one `Base.metadata` (base.py): importing
this package registers them all, which is what the migrations' environment and
`compare_metadata` see. Every name is re-exported here: the rest of the hub
imports from `sendense.hub.db.models`, not from the modules.
"""

from __future__ import annotations

from sendense.hub.db.models.auth import ApiToken, AuditEntry, FailedAttempt, User
from sendense.hub.db.models.base import NAMING, Base, UtcDateTime, enum_type, new_id, utcnow
from sendense.hub.db.models.copies import CopyObject, CopyPoint, CopyTarget, CopyUpload
from sendense.hub.db.models.exports import NbdExport, NbdPort
from sendense.hub.db.models.nodes import Node, NodeAccount, PairingCode
from sendense.hub.db.models.notify import NotifyMark, NotifyOutbox, NotifyRule, NotifyTarget
from sendense.hub.db.models.points import Merge, PointStatus, RestorePoint, RestorePointDisk
from sendense.hub.db.models.policies import Policy, PolicyAssignment
from sendense.hub.db.models.repositories import Repository, RepositoryUsageSample
from sendense.hub.db.models.tasks import ACTIVE_JOB_STATES, Job, JobState, TaskKind
from sendense.hub.db.models.vms import Vcenter, Vm, VmDisk

__all__ = [
    "ACTIVE_JOB_STATES",
    "NAMING",
    "ApiToken",
    "AuditEntry",
    "Base",
    "CopyObject",
    "CopyPoint",
    "CopyTarget",
    "CopyUpload",
    "FailedAttempt",
    "Job",
    "JobState",
    "Merge",
    "NbdExport",
    "NbdPort",
    "Node",
    "NodeAccount",
    "NotifyMark",
    "NotifyOutbox",
    "NotifyRule",
    "NotifyTarget",
    "PairingCode",
    "PointStatus",
    "Policy",
    "PolicyAssignment",
    "Repository",
    "RepositoryUsageSample",
    "RestorePoint",
    "RestorePointDisk",
    "TaskKind",
    "User",
    "UtcDateTime",
    "Vcenter",
    "Vm",
    "VmDisk",
    "enum_type",
    "new_id",
    "utcnow",
]
