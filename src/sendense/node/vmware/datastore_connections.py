"""Kept-alive HTTPS connections to one datastore host, shared by a job's readers.

A backup opens them while vSphere takes the snapshot (`warm`): a TLS handshake
costs a few milliseconds of both ends' CPU, and an incremental's whole copy
takes about a hundred, so the handshakes are better done while the node waits
for vCenter anyway. A connection the server closed while it waited is opened
again on its first request (the reader's one retry).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import queue
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)
WARM_AT_MOST = 16  # connections opened ahead; more are opened when asked for
CONNECT_TIMEOUT = 15.0  # a connection opened ahead; a job's end waits for it


class DatastoreConnections:
    def __init__(
        self, host: str, port: int, ssl_context: ssl.SSLContext, timeout: float = 120.0
    ) -> None:
        self.host, self.port = host, port
        self._ssl = ssl_context
        self._timeout = timeout
        self._idle: queue.SimpleQueue[http.client.HTTPSConnection] = queue.SimpleQueue()
        self._all: list[http.client.HTTPSConnection] = []
        self._lock = threading.Lock()
        self._warming: ThreadPoolExecutor | None = None
        self._closed = False

    def _new(self) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(
            self.host, self.port, context=self._ssl, timeout=self._timeout
        )
        with self._lock:
            self._all.append(conn)
        return conn

    def get(self) -> http.client.HTTPSConnection:
        """An idle connection, or a new one (it connects on its first request)."""
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self._new()

    def put(self, conn: http.client.HTTPSConnection) -> None:
        """Give `conn` back; a closed one connects again on its next request."""
        self._idle.put(conn)

    def warm(self, count: int) -> None:
        """Open up to `count` connections in the background; returns at once. One
        that cannot be opened is left to the reader (its error is the read's)."""
        count = min(count, WARM_AT_MOST)
        if count <= 0:
            return
        self._warming = ThreadPoolExecutor(count, thread_name_prefix="datastore-connect")
        for _ in range(count):
            self._warming.submit(self._open_one)
        # Its threads end once the connections are open, not with the job: fifty
        # jobs at once would otherwise keep hundreds of idle threads.
        self._warming.shutdown(wait=False)

    def _open_one(self) -> None:
        conn = self._new()
        try:
            if not self._closed:
                conn.timeout = min(self._timeout, CONNECT_TIMEOUT)
                conn.connect()
                conn.timeout = self._timeout
                if conn.sock is not None:
                    conn.sock.settimeout(self._timeout)
        except OSError as exc:
            log.info("datastore connection to %s not opened ahead: %s", self.host, exc)
            conn.close()
        self._idle.put(conn)

    def close(self) -> None:
        """Close every connection (blocks until the warming is done)."""
        self._closed = True
        if self._warming is not None:
            self._warming.shutdown(wait=True)
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(OSError):
                    conn.close()
