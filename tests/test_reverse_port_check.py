"""The hub's client of a node's API checks each new connection before it sends a
byte: the process holding the connection's other end must descend from the
tunnel's sshd and run its executable. A listener that fails the check receives
nothing, not even the request line with the node's token; one that passes
answers. The listener is a real process (an HTTP server in Python), checked as
the tunnel's sshd sessions are (tunnel_sshd.connection_held_by), with this test
process in the role of the sshd it must descend from."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sendense.hub.nodes.client import CheckedTransport
from sendense.hub.nodes.tunnel_sshd import connection_held_by
from tests.rig.net import free_port
from tests.rig.procs import stop

SERVER = """
import http.server, sys
log = open(sys.argv[2], "ab", buffering=0)
class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        token = self.headers.get("Authorization", "")
        log.write(self.requestline.encode() + b" " + token.encode())
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Answer).serve_forever()
"""


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port, received = free_port(), tmp_path / "received"
    received.touch()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(received)])
    try:
        deadline = time.monotonic() + 10
        while True:  # listening (a connection that sends nothing)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the listener did not start"
                time.sleep(0.05)
        yield port, received
    finally:
        stop(server)


def client(port: int, ancestor: int) -> httpx.Client:
    python = os.path.realpath(sys.executable)
    return httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": "Bearer node-api-token"},
        transport=CheckedTransport(
            lambda port, peer: connection_held_by(port, peer, ancestor, python, wait_s=2)
        ),
    )


def test_a_listener_that_is_not_the_sshd_s_gets_no_byte(listener: tuple[int, Path]) -> None:
    port, received = listener
    with client(port, ancestor=1) as impostor_check, pytest.raises(httpx.ConnectError) as refused:
        impostor_check.get("/api/v1/jobs/x")
    assert "not connected" in str(refused.value)
    time.sleep(0.2)  # anything sent would have been logged by now
    assert received.read_bytes() == b""


def test_a_listener_below_the_expected_process_answers(listener: tuple[int, Path]) -> None:
    port, received = listener
    with client(port, ancestor=os.getpid()) as ours:
        assert ours.get("/api/v1/jobs/x").json() == {}
        assert ours.get("/api/v1/jobs/y").status_code == 200  # kept alive: no second check
    assert received.read_bytes().startswith(b"GET /api/v1/jobs/x HTTP/1.1 Bearer node-api-token")
