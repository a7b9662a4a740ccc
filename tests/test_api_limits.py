"""Limits of the hub's and node's APIs (issue 12, point 11): a request body is capped
before it is read (a few KiB without credentials, answered 413 without waiting for
the rest), and enrollment attempts from one address are rate-limited (429)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from sendense.common.body_limit import BODY_BYTES, PUBLIC_BODY_BYTES
from sendense.common.config import load_settings
from sendense.node.api.app import create_node_app
from sendense.node.config import NodeSettings
from tests.rig.hub import HubProcess

ENROLL = "/api/v1/nodes/enroll"


@pytest.fixture
def hub_process(tmp_path: Path) -> Iterator[HubProcess]:
    hub = HubProcess(tmp_path / "hub", f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()


def raw_request(hub: HubProcess, head: str, body: bytes) -> bytes:
    """Send a request whose body is short of what its head announces: the answer
    comes only if the server does not wait for the missing bytes."""
    verify = hub.verify
    assert isinstance(verify, ssl.SSLContext)
    with (
        socket.create_connection(("127.0.0.1", hub.port), timeout=30) as raw,
        verify.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(head.encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_a_large_unauthenticated_body_is_refused_before_it_is_read(
    hub_process: HubProcess,
) -> None:
    head = (
        f"POST {ENROLL} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n"
    )
    answer = raw_request(hub_process, head, b'{"code": "')
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_chunked_body_is_cut_off_at_the_cap(hub_process: HubProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"code": "'
        for _ in range(64):
            yield b"x" * 1024

    answer = httpx.post(
        hub_process.url + ENROLL, content=chunks(), timeout=30, verify=hub_process.verify
    )
    assert answer.status_code == 413
    assert answer.json()["error"] == "too_large"


def test_an_authenticated_body_may_be_larger_but_not_unbounded(
    hub_process: HubProcess,
) -> None:
    with hub_process.client(hub_process.initial_token()) as hub:
        padded = {"path": "/nonexistent", "name": "x" * (PUBLIC_BODY_BYTES * 2)}
        within = hub.post("/api/v1/repositories", json=padded)
        assert within.status_code == 422  # read and judged: the name is too long
        huge = {"path": "/nonexistent", "name": "x" * (BODY_BYTES + 1)}
        over = hub.post("/api/v1/repositories", json=huge)
        assert over.status_code == 413


def test_enrollment_attempts_from_one_address_are_limited(hub_process: HubProcess) -> None:
    body = {
        "code": "WRONGCODE123",
        "node_name": "n1",
        "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm0",
        "node_api_token": "t" * 32,
    }
    with hub_process.client() as hub:
        statuses = [hub.post(ENROLL, json=body).status_code for _ in range(10)]
        refused = hub.post(ENROLL, json=body)
    assert 429 not in statuses
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert "too many enrollment attempts" in refused.json()["message"]


def test_the_node_caps_bodies_too(tmp_path: Path) -> None:
    settings = load_settings(NodeSettings, data_dir=tmp_path / "node")
    with TestClient(create_node_app(settings)) as client:
        answer = client.post("/api/v1/backup/start", content=b"x" * (PUBLIC_BODY_BYTES + 1))
        assert answer.status_code == 413
        assert answer.json()["error"] == "too_large"
