"""/api/v1/notifications: targets (SMTP, webhooks; their secrets sealed, a
webhook's HMAC key shown once at creation), rules, and a test message."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from sendense.hub.api.deps import HubDep, authorize
from sendense.hub.notify.targets import RuleInfo, SmtpConfig, TargetInfo

router = APIRouter(
    prefix="/api/v1/notifications", tags=["notifications"], dependencies=[Depends(authorize)]
)
Name = Field(min_length=1, max_length=64)


class SmtpIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = Field(default=None, min_length=1, max_length=255)
    password: SecretStr | None = None
    sender: str = Field(min_length=3, max_length=255)
    recipients: list[str] = Field(min_length=1, max_length=50)
    ca_file: str | None = Field(
        default=None, max_length=4096, description="a CA file on the hub; else the system's CAs"
    )


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=2000)


class TargetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Name
    smtp: SmtpIn | None = None
    webhook: WebhookIn | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> TargetIn:
        if (self.smtp is None) == (self.webhook is None):
            raise ValueError("give exactly one of smtp and webhook")
        return self


class TargetCreated(BaseModel):
    target: TargetInfo
    secret: str | None = Field(
        default=None, description="the webhook's HMAC-SHA256 key: shown this once"
    )


@router.get("/targets")
def list_targets(hub: HubDep) -> list[TargetInfo]:
    """Targets with their last delivery and last error (a warning to act on)."""
    return hub.notifications.targets()


@router.post("/targets", status_code=201)
def add_target(hub: HubDep, body: TargetIn) -> TargetCreated:
    if body.webhook is not None:
        target, key = hub.notifications.add_webhook(body.name, body.webhook.url)
        return TargetCreated(target=target, secret=key)
    assert body.smtp is not None
    smtp = body.smtp
    config = SmtpConfig(
        smtp.host,
        smtp.port,
        smtp.security,
        smtp.sender,
        smtp.recipients,
        smtp.username,
        smtp.ca_file,
    )
    password = smtp.password.get_secret_value() if smtp.password else None
    return TargetCreated(target=hub.notifications.add_smtp(body.name, config, password))


@router.delete("/targets/{name}")
def remove_target(hub: HubDep, name: str) -> TargetInfo:
    """The target, its rules and what it had not sent yet."""
    return hub.notifications.remove_target(name)


@router.post("/targets/{name}/test")
def test_target(hub: HubDep, name: str) -> TargetInfo:
    """Send a test message now: 502 with the server's answer when it fails."""
    return hub.notifications.test(name)


class RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Name
    target: str = Name
    events: list[str] = Field(min_length=1, max_length=20)
    vm_pattern: str = Field(default="*", min_length=1, max_length=255)
    kinds: list[str] = Field(default_factory=list, max_length=20)
    free_below_percent: float | None = Field(default=None, gt=0, le=100)
    node_down_minutes: float | None = Field(default=None, gt=0)
    max_age_hours: float | None = Field(default=None, gt=0)


@router.get("/rules")
def list_rules(hub: HubDep) -> list[RuleInfo]:
    return hub.notifications.rules()


@router.post("/rules", status_code=201)
def add_rule(hub: HubDep, body: RuleIn) -> RuleInfo:
    thresholds = {
        "free_below_percent": body.free_below_percent,
        "node_down_minutes": body.node_down_minutes,
        "max_age_hours": body.max_age_hours,
    }
    return hub.notifications.add_rule(
        body.name, body.target, body.events, body.vm_pattern, body.kinds, thresholds
    )


@router.delete("/rules/{name}")
def remove_rule(hub: HubDep, name: str) -> RuleInfo:
    return hub.notifications.remove_rule(name)
