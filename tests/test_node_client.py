"""The hub's client of a node's API: a tunnel that drops for a moment is waited out,
a node that stays away is reported as unavailable, the node's own answers are
never repeated. A real HTTP server stands in for the node on its reverse port."""

from __future__ import annotations

import json
import threading
import time
from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import SecretStr

from sendense.common.contract import DiskLayout, NodeJobStatus, RestoreCheckRequest, VmLayout
from sendense.common.errors import SendenseError, Unavailable
from sendense.common.sshkeys import enrollment_challenge
from sendense.hub.nodes.client import NodeCallFailed, NodeClient, NodeRefused
from sendense.hub.service import Hub
from tests.rig.net import free_port

NODE_TOKEN = "sdn_node_token_for_tests"
MiB = 1 << 20
JOB = NodeJobStatus(job_id="j1", vm_name="vm1", state="running", started_at=1.0)


@dataclass
class FakeNode:
    """Answers in order: each (status, body) once, the last one from then on."""

    answers: list[tuple[int, str, str]]
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)

    def next(self) -> tuple[int, str, str]:
        index = min(len(self.requests) - 1, len(self.answers) - 1)
        return self.answers[index]


def node_error(status: int, code: str) -> tuple[int, str, str]:
    return status, "application/json", json.dumps({"error": code, "message": "refused"})


JOB_ANSWER = (200, "application/json", JOB.model_dump_json())
TUNNEL_503 = (503, "text/plain", "Service Unavailable")
TUNNEL_502 = (502, "text/html", "<html>Bad Gateway</html>")


@contextmanager
def serve(port: int, fake: FakeNode, after: float = 0.0) -> Iterator[None]:
    """The node's API on `port`, listening only `after` seconds from now."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            fake.requests.append((self.command, self.path, self.headers.get("Authorization")))
            status, kind, text = fake.next()
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = _answer
        do_POST = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    servers: list[ThreadingHTTPServer] = []

    def later() -> None:
        time.sleep(after)
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        servers.append(server)
        server.serve_forever(poll_interval=0.05)

    thread = threading.Thread(target=later, daemon=True)
    thread.start()
    try:
        yield
    finally:
        deadline = time.monotonic() + after + 5
        while not servers and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        for server in servers:
            server.shutdown()
            server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def port(hub: Hub) -> int:
    """A node enrolled on the hub whose reverse port is a free one."""
    port = free_port()
    hub.nodes.reverse_ports = (port, port)
    code, _ = hub.nodes.pairing_code()
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    signed = private.sign(enrollment_challenge(code, "site-a", public, None))
    hub.nodes.enroll(code, "site-a", public, b64encode(signed).decode(), NODE_TOKEN, None)
    return port


def client(hub: Hub, retry_s: float, owns: list[bool] | None = None) -> NodeClient:
    """`owns`: what successive checks of the reverse port's listener find (then True)."""

    def owns_listener(_port: int) -> bool:
        return owns.pop(0) if owns else True

    return NodeClient(
        hub.nodes, "site-a", owns_listener=owns_listener, retry_s=retry_s, backoff=0.05
    )


def test_a_call_waits_out_a_tunnel_that_is_down_for_a_moment(hub: Hub, port: int) -> None:
    fake = FakeNode([JOB_ANSWER])
    node = client(hub, retry_s=30)
    began = time.monotonic()
    with serve(port, fake, after=0.6):
        status = node.job("j1")
    assert status == JOB
    assert time.monotonic() - began >= 0.6
    assert [(m, p) for m, p, _ in fake.requests] == [("GET", "/api/v1/jobs/j1")]
    node.close()


def test_a_node_that_stays_away_is_unavailable_after_the_deadline(hub: Hub, port: int) -> None:
    node = client(hub, retry_s=0.8)
    began = time.monotonic()
    with pytest.raises(Unavailable):
        node.job("j1")
    waited = time.monotonic() - began
    assert 0.8 <= waited < 5
    node.close()


def test_a_reverse_port_not_held_by_the_tunnel_gets_no_request_until_it_is(
    hub: Hub, port: int
) -> None:
    """The token and passwords go only to our sshd's listener: while another process
    holds the port (or none), the call waits, and sends nothing there."""
    fake = FakeNode([JOB_ANSWER])
    with serve(port, fake):
        node = client(hub, retry_s=0.5, owns=[False] * 1000)
        with pytest.raises(Unavailable):
            node.job("j1")
        assert fake.requests == []
        node = client(hub, retry_s=30, owns=[False, False, False])
        assert node.job("j1") == JOB
        assert len(fake.requests) == 1
        node.close()


@pytest.mark.parametrize(
    "answers",
    [[TUNNEL_503, JOB_ANSWER], [TUNNEL_502, TUNNEL_503, JOB_ANSWER]],
    ids=["503", "502-then-503"],
)
def test_a_gateway_error_of_the_tunnel_is_repeated(
    hub: Hub, port: int, answers: list[tuple[int, str, str]]
) -> None:
    fake = FakeNode(answers)
    with serve(port, fake):
        node = client(hub, retry_s=30)
        assert node.job("j1") == JOB
        node.close()
    assert len(fake.requests) == len(answers)


def check_request() -> RestoreCheckRequest:
    return RestoreCheckRequest(
        vcenter_host="vc.example.com",
        vcenter_user="user",
        vcenter_password=SecretStr("secret"),
        vm_name="restored",
        layout=VmLayout(disks=[DiskLayout(key=2000, controller_key=1000, capacity_bytes=MiB)]),
    )


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (node_error(409, "vm_busy"), NodeRefused),
        (node_error(404, "not_found"), NodeRefused),
        (node_error(422, "invalid_input"), NodeRefused),
        (node_error(503, "unavailable"), NodeCallFailed),  # the node's own, not the tunnel's
        (node_error(502, "nbd_error"), NodeCallFailed),
    ],
)
def test_an_answer_of_the_node_is_never_repeated(
    hub: Hub, port: int, answer: tuple[int, str, str], error: type[SendenseError]
) -> None:
    """After a blip (a 503 of the tunnel, repeated), the node's own answer ends the call."""
    fake = FakeNode([TUNNEL_503, answer])
    with serve(port, fake):
        node = client(hub, retry_s=30)
        with pytest.raises(error) as raised:
            node.check_restore(check_request())
        node.close()
    assert len(fake.requests) == 2
    if error is NodeRefused:
        assert raised.value.http_status == answer[0]
        assert raised.value.code == json.loads(answer[2])["error"]
