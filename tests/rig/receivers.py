"""Real local servers that notifications go to: an SMTP server (aiosmtpd) that
keeps the mails it gets, optionally refusing every login, and an HTTP server in a
thread that keeps the POSTs it gets and answers with the statuses it is given."""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from tests.rig.net import free_port


@dataclass
class Mailbox:
    port: int
    mails: list[EmailMessage] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        self.mails.append(email.message_from_bytes(raw, policy=email.policy.default))
        return "250 OK"

    def texts(self) -> list[str]:
        return [str(m["Subject"]) + "\n" + m.get_content() for m in self.mails]


@contextmanager
def smtp_server(
    refuse_logins: bool = False,
    *,
    password: str | None = None,
    tls: str = "none",
    cert: tuple[Path, Path] | None = None,
) -> Iterator[Mailbox]:
    """An SMTP server on a free loopback port. With `refuse_logins` it offers AUTH
    and refuses every login; with `password` it accepts that one. `tls`: "none",
    "starttls" (required before AUTH and mail) or "tls" (implicit), with
    `cert` = (certificate, key)."""
    box = Mailbox(free_port())

    def authenticator(
        _server: SMTP, _session: Session, _envelope: Envelope, _mechanism: str, data: Any
    ) -> AuthResult:
        box.logins.append(data.login.decode())
        ok = password is not None and data.password.decode() == password
        return AuthResult(success=ok, handled=False)

    extra: dict[str, Any] = {}
    if refuse_logins or password is not None:
        # aiosmtpd tells only STARTTLS, not implicit TLS, from plain SMTP
        extra = {"authenticator": authenticator, "auth_require_tls": tls == "starttls"}
    if tls != "none":
        assert cert is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*cert)
        if tls == "starttls":
            extra |= {"tls_context": context, "require_starttls": True}
        else:
            extra |= {"ssl_context": context}
    controller = Controller(box, hostname="127.0.0.1", port=box.port, **extra)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    posts: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answered in turn, then 200


@contextmanager
def http_receiver() -> Iterator[Receiver]:
    port = free_port()
    receiver = Receiver(f"http://127.0.0.1:{port}/hooks/sendense")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                receiver.posts.append(Received(self.path, dict(self.headers.items()), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
