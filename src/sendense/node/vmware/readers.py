"""Disk readers: one interface, two ways to read a snapshot's disk.

* `HttpsDatastoreReader`: `GET /folder/<path>-flat.vmdk?dcPath=..&dsName=..` with
  HTTP Range, kept-alive connections, several ranges in flight. Works against
  vCenter, ESXi and the simulator, authenticated by the SOAP session cookie.
* `VddkReader` (readers_vddk.py): nbdkit's `vddk` plugin, where VDDK is installed.
"""

from __future__ import annotations

import asyncio
import http.client
import queue
import re
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol
from urllib.parse import quote

from sendense.common.errors import InvalidInput
from sendense.node.vmware.connection import VcenterError

_DS_PATH = re.compile(r"^\[(?P<ds>[^\]]+)\]\s*(?P<path>.+)$")


class DiskReader(Protocol):
    async def read(self, offset: int, length: int) -> bytes: ...

    async def close(self) -> None: ...


def flat_file(datastore_path: str) -> tuple[str, str]:
    """`[LocalDS_0] vm1/vm1.vmdk` -> (`LocalDS_0`, `vm1/vm1-flat.vmdk`): the descriptor's
    data extent, which is what /folder serves byte for byte."""
    match = _DS_PATH.match(datastore_path.strip())
    if not match:
        raise InvalidInput(f"not a datastore path: {datastore_path!r}")
    path = match["path"]
    if ".." in path.split("/"):
        raise InvalidInput(f"datastore path {datastore_path!r} climbs out of the datastore")
    if path.endswith(".vmdk") and not path.endswith("-flat.vmdk"):
        path = path[: -len(".vmdk")] + "-flat.vmdk"
    return match["ds"], path


class HttpsDatastoreReader:
    """Range GETs on kept-alive connections, one thread per connection.

    Measured on the simulator (2 cores, 4 MiB ranges): httpx's async client
    86-103 MB/s, raw asyncio SSL streams 275-362 MB/s, http.client in threads
    512-574 MB/s: its reads run in C with the GIL released.
    """

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        session_cookie: str,
        datacenter: str,
        datastore_path: str,
        connections: int = 4,
        timeout: float = 120.0,
    ) -> None:
        datastore, path = flat_file(datastore_path)
        self.path = f"/folder/{quote(path)}?dcPath={quote(datacenter)}&dsName={quote(datastore)}"
        self.host, self.port = host, port
        self._ssl = ssl_context
        self._cookie = session_cookie
        self._timeout = timeout
        self._idle: queue.SimpleQueue[http.client.HTTPSConnection] = queue.SimpleQueue()
        self._all: list[http.client.HTTPSConnection] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(connections, thread_name_prefix="datastore-read")

    def _connection(self) -> http.client.HTTPSConnection:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            conn = http.client.HTTPSConnection(
                self.host, self.port, context=self._ssl, timeout=self._timeout
            )
            with self._lock:
                self._all.append(conn)
            return conn

    def _get(self, conn: http.client.HTTPSConnection, offset: int, length: int) -> bytes:
        headers = {"Range": f"bytes={offset}-{offset + length - 1}", "Cookie": self._cookie}
        conn.request("GET", self.path, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 206:
            raise VcenterError(
                f"datastore read at {offset} answered HTTP {response.status}, not 206"
            )
        if len(data) != length:
            raise VcenterError(f"datastore read at {offset}: got {len(data)} of {length} bytes")
        return data

    def _read(self, offset: int, length: int) -> bytes:
        conn = self._connection()
        try:
            data = self._get(conn, offset, length)
        except (OSError, http.client.HTTPException):
            # A kept-alive connection the server closed: one retry on a new one.
            conn.close()
            try:
                data = self._get(conn, offset, length)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise VcenterError(f"reading {length} bytes at {offset} failed: {exc}") from exc
        self._idle.put(conn)
        return data

    async def read(self, offset: int, length: int) -> bytes:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._read, offset, length)

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, wait=True)
        with self._lock:
            for conn in self._all:
                conn.close()
