"""vCenter sessions kept between a node's jobs.

A login costs a pinned-certificate fetch, a TLS handshake and three SOAP round
trips: 10-15 ms against the simulator, and often a second or more against a real
vCenter behind SSO. The hub asks the node for a VM's inventory and then starts
its backup, so each nightly incremental logged in twice, where its copy may
take a fraction of a second; and vCenter limits its sessions. A session is kept
for `idle_s` after its last job and shared by the jobs of the same login at once
(pyVmomi's stub pools its connections for threads).

A session is kept only for the exact login that opened it (host, user, the
password's digest, the pinned thumbprint): a changed password opens a new one. A
session idle for more than `CHECK_AFTER_S` is asked for its current session
before reuse (vCenter ends idle sessions after 30 minutes by default); one that
ended, or whose job failed, is logged out and not used again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from sendense.node.vmware.connection import Vcenter, connect

log = logging.getLogger(__name__)
IDLE_S = 60.0
CHECK_AFTER_S = 20.0

Key = tuple[str, str, str, str | None, bool]
Connect = Callable[[str, str, str, str | None, bool], Vcenter]


@dataclass
class _Session:
    vc: Vcenter
    users: int = 0
    last_used: float = field(default_factory=time.monotonic)
    broken: bool = False
    closer: asyncio.TimerHandle | None = None


def _alive(vc: Vcenter) -> bool:
    try:
        return vc.content.sessionManager.currentSession is not None
    except Exception:  # a dropped connection, NotAuthenticated: not usable
        return False


class VcenterSessions:
    def __init__(self, idle_s: float = IDLE_S, opener: Connect = connect) -> None:
        self.idle_s = idle_s
        self._connect = opener
        self._sessions: dict[Key, _Session] = {}
        self._locks: dict[Key, asyncio.Lock] = {}  # one login at a time per key
        self._expiring: set[asyncio.Task[None]] = set()
        self.logins = 0  # sessions opened since the node started

    @contextlib.asynccontextmanager
    async def use(
        self, host: str, user: str, password: str, thumbprint: str | None, insecure: bool
    ) -> AsyncIterator[Vcenter]:
        """A logged-in session for this login, new or kept; a failure inside
        drops it (logged out once its other users are done)."""
        digest = hashlib.sha256(password.encode()).hexdigest()
        key: Key = (host, user, digest, thumbprint, insecure)
        session = await self._take(
            key, lambda: self._connect(host, user, password, thumbprint, insecure)
        )
        try:
            yield session.vc
        except BaseException:
            session.broken = True
            raise
        finally:
            await self._give_back(key, session)

    def _lock(self, key: Key) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def _take(self, key: Key, opener: Callable[[], Vcenter]) -> _Session:
        async with self._lock(key):
            session = self._sessions.get(key)
            if session is not None and session.broken:
                session = None  # replaced below; its users' last one logs it out
            if session is not None and session.users == 0:
                if session.closer is not None:
                    session.closer.cancel()
                    session.closer = None
                idle = time.monotonic() - session.last_used
                if idle > CHECK_AFTER_S and not await asyncio.to_thread(_alive, session.vc):
                    log.info("vCenter session ended while kept host=%s", session.vc.host)
                    del self._sessions[key]
                    await asyncio.to_thread(session.vc.close)
                    session = None
            if session is None:
                session = _Session(await asyncio.to_thread(opener))
                self.logins += 1
                self._sessions[key] = session
            session.users += 1
            return session

    async def _give_back(self, key: Key, session: _Session) -> None:
        async with self._lock(key):
            session.users -= 1
            session.last_used = time.monotonic()
            if session.users > 0:
                return
            if session.broken or self._sessions.get(key) is not session:
                if self._sessions.get(key) is session:
                    del self._sessions[key]
                await asyncio.to_thread(session.vc.close)
                return
            session.closer = asyncio.get_running_loop().call_later(
                self.idle_s, self._start_expiry, key, session
            )

    def _start_expiry(self, key: Key, session: _Session) -> None:
        task = asyncio.get_running_loop().create_task(self._expire(key, session))
        self._expiring.add(task)
        task.add_done_callback(self._expiring.discard)

    async def _expire(self, key: Key, session: _Session) -> None:
        async with self._lock(key):
            if session.users or self._sessions.get(key) is not session:
                return
            del self._sessions[key]
        await asyncio.to_thread(session.vc.close)

    async def close(self) -> None:
        """Log every kept session out (the node stops)."""
        for task in list(self._expiring):
            task.cancel()
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            if session.closer is not None:
                session.closer.cancel()
            await asyncio.to_thread(session.vc.close)
