"""Domain errors: a message an operator can act on, an HTTP status and a CLI exit code.

The API maps them to JSON `{"error": ..., "message": ...}`; the CLI prints the
message on one line and exits with `exit_code`. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class SendenseError(Exception):
    """Base of every expected failure."""

    http_status = 500
    exit_code = 1
    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(SendenseError):
    http_status = 422
    exit_code = 2
    code = "invalid_input"


class NotFound(SendenseError):
    http_status = 404
    exit_code = 3
    code = "not_found"


class Conflict(SendenseError):
    http_status = 409
    exit_code = 4
    code = "conflict"


class Unauthorized(SendenseError):
    http_status = 401
    exit_code = 5
    code = "unauthorized"


class Forbidden(SendenseError):
    """The caller is known, but its role does not allow this."""

    http_status = 403
    exit_code = 11
    code = "forbidden"


class PoolExhausted(SendenseError):
    """No free NBD port: retry later, when a running job has released its ports."""

    http_status = 503
    exit_code = 6
    code = "pool_exhausted"


class InsufficientSpace(SendenseError):
    http_status = 507
    exit_code = 7
    code = "insufficient_space"


class ToolFailed(SendenseError):
    """An external program (qemu-img, qemu-nbd) failed; carries argv, exit code, stderr."""

    http_status = 502
    exit_code = 8
    code = "tool_failed"

    def __init__(self, argv: list[str], returncode: int | None, stderr: str) -> None:
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        super().__init__(f"{argv[0]} failed (exit {returncode}): {tail}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class Unavailable(SendenseError):
    """A service the command needs does not answer."""

    http_status = 503
    exit_code = 9
    code = "unavailable"


class TooManyAttempts(SendenseError):
    """Too many attempts from one address in a short time: wait, then retry."""

    http_status = 429
    exit_code = 10
    code = "too_many_attempts"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# Conditions callers branch on: each has its own class and the facts as fields,
# so code and tests test the type, never the wording.


class VmBusy(Conflict):
    """The VM has a task running: one task per VM at a time."""

    code = "vm_busy"

    def __init__(self, vm: str, task_id: str | None, message: str | None = None) -> None:
        super().__init__(message or f"VM {vm!r} has job {task_id} running")
        self.vm = vm
        self.task_id = task_id


class TaskNotRunning(Conflict):
    """The task is not in a state that allows this (ended, or not yet started)."""

    code = "task_not_running"

    def __init__(self, task_id: str, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id


class WrongTaskKind(Conflict):
    """The operation applies to another kind of task (finishing a prune as a backup)."""

    code = "wrong_task_kind"

    def __init__(self, task_id: str, kind: str, expected: str) -> None:
        super().__init__(f"task {task_id} is a {kind}, not a {expected}")
        self.task_id = task_id
        self.kind = kind
        self.expected = expected


class PointNotRestorable(Conflict):
    """The restore point is not complete (incomplete or invalid)."""

    code = "point_not_restorable"

    def __init__(self, point_id: str, status: str) -> None:
        super().__init__(f"restore point {point_id} is {status}: not restorable")
        self.point_id = point_id
        self.status = status


class NodeTaskEnded(SendenseError):
    """A node ended its half of a task without completing it."""

    http_status = 502
    code = "node_task_ended"

    def __init__(self, state: str, error: str | None, what: str = "job") -> None:
        super().__init__(f"node reported the {what} {state}: {error}")
        self.state = state
        self.error = error


class MergeUnproven(Conflict):
    """A prune's merge step could not prove that the child layer reads as it did
    before: the removed layer is kept and the child is marked invalid."""

    code = "merge_unproven"

    def __init__(self, merge_id: str, child_id: str, message: str) -> None:
        super().__init__(message)
        self.merge_id = merge_id
        self.child_id = child_id
