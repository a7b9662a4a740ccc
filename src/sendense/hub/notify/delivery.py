"""Sending one message to one target: a mail through SMTP, or a JSON POST to a
webhook signed with HMAC-SHA256 of its body. A failure is a `DeliveryFailed`
whose message names the server, never the secret."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import ssl
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from sendense.common.errors import InvalidInput, SendenseError
from sendense.common.tls import ca_context

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Sendense-Signature"
SMTP_TIMEOUT_S = 30.0
WEBHOOK_TIMEOUT_S = 10.0
WEBHOOK_TRIES = 4  # waits of backoff, 2 x backoff, 4 x backoff between them


class DeliveryFailed(SendenseError):
    """The target's server refused or did not answer."""

    http_status = 502
    exit_code = 8
    code = "delivery_failed"


@dataclass(frozen=True)
class Message:
    """What is sent: `subject` and `text` make a mail; a webhook gets `payload`
    with both added."""

    kind: str  # event | digest | report | test
    subject: str
    text: str
    payload: dict[str, Any] = field(default_factory=dict)


def signature(secret: str, body: bytes) -> str:
    """The value of the signature header: `sha256=<hex of HMAC-SHA256(secret, body)>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send(
    kind: str,
    config: dict[str, Any],
    secret: str | None,
    message: Message,
    backoff_s: float = 1.0,
    tries: int = WEBHOOK_TRIES,
) -> None:
    if kind == "smtp":
        send_mail(config, secret, message)
    else:
        send_webhook(config["url"], secret or "", message, backoff_s, tries)


def send_mail(config: dict[str, Any], password: str | None, message: Message) -> None:
    mail = EmailMessage()
    mail["Subject"] = " ".join(message.subject.split())  # a VM's name may hold a line break
    mail["From"] = config["sender"]
    mail["To"] = ", ".join(config["recipients"])
    mail.set_content(message.text)
    host, port, security = config["host"], int(config["port"]), config["security"]
    where = f"SMTP server {host}:{port}"
    try:
        context = ca_context(Path(config["ca_file"])) if config.get("ca_file") else ssl_context()
        server: smtplib.SMTP
        if security == "tls":
            server = smtplib.SMTP_SSL(host, port, timeout=SMTP_TIMEOUT_S, context=context)
        else:
            server = smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT_S)
        with server:
            if security == "starttls":
                server.starttls(context=context)
            if config.get("username"):
                server.login(config["username"], password or "")
            server.send_message(mail)
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryFailed(f"{where} refused the login: {_reply(exc)}") from None
    except smtplib.SMTPResponseException as exc:
        raise DeliveryFailed(f"{where} refused the mail: {_reply(exc)}") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryFailed(f"{where} failed: {exc}") from None
    except InvalidInput as exc:  # the CA file is gone or broken
        raise DeliveryFailed(f"{where}: {exc.message}") from None


def ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def _reply(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else ""
    return f"{exc.smtp_code} {text}".strip()


def send_webhook(
    url: str, secret: str, message: Message, backoff_s: float = 1.0, tries: int = WEBHOOK_TRIES
) -> None:
    """POST the message as JSON, signed; a 5xx, 429 or no answer is tried again
    after backoff_s, then twice as long... (`tries` in all)."""
    body = json.dumps(
        {**message.payload, "type": message.kind, "subject": message.subject, "text": message.text},
        sort_keys=True,
    ).encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(secret, body)}
    parts = urlsplit(url)  # its path (or user:password@) may hold a token: never shown
    where = f"webhook at {parts.hostname}" + (f":{parts.port}" if parts.port else "")
    problem = ""
    for attempt in range(tries):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            answer = httpx.post(url, content=body, headers=headers, timeout=WEBHOOK_TIMEOUT_S)
        except httpx.HTTPError as exc:
            problem = f"{where} did not answer: {type(exc).__name__}"
            continue
        if answer.status_code < 300:
            return
        problem = f"{where} answered {answer.status_code}"
        if answer.status_code < 500 and answer.status_code != 429:
            break
        if attempt + 1 < tries:
            log.info("%s, trying again (%d of %d)", problem, attempt + 1, tries)
    raise DeliveryFailed(problem)
