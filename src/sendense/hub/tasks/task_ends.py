"""A task's end in its log: the line that says how it ended, as its row records
it (its own outcome, an operator's cancel, a hub stop or restart)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from sendense.hub.db.database import Database
from sendense.hub.db.models import ACTIVE_JOB_STATES, Job, JobState
from sendense.hub.tasks.task_log import TaskLogs
from sendense.hub.tasks.task_log_handler import write_line


def active_tasks(db: Database) -> list[str]:
    """This hub's tasks the database calls active."""
    with db.session() as s:
        return list(s.scalars(select(Job.id).where(Job.state.in_(ACTIVE_JOB_STATES), db.owned())))


def log_end(db: Database, logs: TaskLogs, task_id: str, name: str | None = None) -> None:
    """`<name> <state>[: <error>]` (name: the task's kind by default); nothing
    while the row still says active (whoever ends it later writes the line)."""
    try:
        with db.session() as s:
            job = s.get(Job, task_id)
            if job is None or job.state in ACTIVE_JOB_STATES:
                return
            state, error, kind = job.state, job.error, job.kind
    except DBAPIError as exc:
        write_line(logs, task_id, "WARNING", f"{name or 'task'} ended; its state is unknown: {exc}")
        return
    level = {JobState.COMPLETE: "INFO", JobState.CANCELLED: "WARNING"}.get(state, "ERROR")
    ended = f"{name or kind.value} {state.value}"
    write_line(logs, task_id, level, f"{ended}: {error}" if error else ended)
