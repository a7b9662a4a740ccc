"""Notifications against real local servers: mails received by aiosmtpd, signed
webhooks received by an HTTP server. The failures are real: backups through the
hub's API of VMs whose node is enrolled but not connected (each fails once its
node timeout has passed), and backups driven from outside that end failed."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from base64 import b64encode
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient

from sendense.common.sshkeys import enrollment_challenge
from sendense.common.tls import ensure_self_signed
from sendense.hub.api.app import create_app
from sendense.hub.db.models import utcnow
from sendense.hub.service import Hub
from tests.conftest import make_settings
from tests.rig.cli import sendense
from tests.rig.hub import HubProcess
from tests.rig.net import free_port
from tests.rig.receivers import Mailbox, http_receiver, smtp_server

API = "/api/v1/notifications"
BOTH = pytest.mark.parametrize("site_database_url", ["sqlite", "postgresql"], indirect=True)
NODE_DOWN = "does not answer"  # what a backup of a VM behind a node that is away fails with
DISKS = [{"key": 2000, "capacity_bytes": 1 << 20}]


def open_hub(tmp_path: Path, sqlite_url: str, **settings: Any) -> Hub:
    base = make_settings(tmp_path, sqlite_url)
    return Hub.open(
        base.model_copy(
            update={
                "node_timeout_s": 0.3,
                "notify_tick_s": 3600.0,  # the tests tick themselves
                "notify_webhook_backoff_s": 0.05,
                "daily_report_time": "00:00",
                **settings,
            }
        )
    )


def enroll_away_node(hub: Hub) -> None:
    """Node site-a, enrolled, whose tunnel never comes up; vCenter vc.test behind it."""
    port = free_port()
    hub.nodes.reverse_ports = (port, port)
    code, _ = hub.nodes.pairing_code()
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    challenge = enrollment_challenge(code, "site-a", public, hub.api_cert_sha256())
    signed = b64encode(private.sign(challenge)).decode()
    # The whole enrollment, its system user included: exports are opened for it.
    hub.enroll_node(code, "site-a", public, signed, "node-token-0123456789")
    hub.vcenters.add("vc.test", "backup@vsphere.local", "vc-password-xyz", "site-a", None)


@pytest.fixture
def nhub(tmp_path: Path, site_database_url: str) -> Iterator[Hub]:
    """SQLite, or PostgreSQL for the tests parametrized with `BOTH`."""
    hub = open_hub(tmp_path, site_database_url)
    enroll_away_node(hub)
    try:
        yield hub
    finally:
        hub.reconcile("test ended")
        hub.close()


@pytest.fixture
def napi(nhub: Hub) -> Iterator[TestClient]:
    token = nhub.tokens.create("admin")
    with TestClient(create_app(nhub), headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def fail_backups(api: TestClient, vms: list[str], timeout: float = 120) -> list[dict[str, Any]]:
    """Back the VMs up through the hub; their node is away, so each task fails."""
    ids = []
    for vm in vms:
        answer = api.post("/api/v1/backups", json={"vm": vm})
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["job_id"])
    deadline = time.monotonic() + timeout
    while True:
        jobs = [api.get(f"/api/v1/jobs/{i}").json() for i in ids]
        if all(j["state"] == "failed" for j in jobs):
            return jobs
        assert time.monotonic() < deadline, [j["state"] for j in jobs]
        time.sleep(0.1)


def add_smtp(api: TestClient, box: Mailbox, name: str = "ops", **more: str) -> None:
    smtp = {
        "host": "127.0.0.1",
        "port": box.port,
        "security": "none",
        "sender": "hub@example.test",
        "recipients": ["ops@example.test"],
        **more,
    }
    answer = api.post(f"{API}/targets", json={"name": name, "smtp": smtp})
    assert answer.status_code == 201, answer.text
    assert answer.json()["secret"] is None


def add_rule(api: TestClient, name: str, target: str, events: list[str], **more: Any) -> None:
    body = {"name": name, "target": target, "events": events, **more}
    answer = api.post(f"{API}/rules", json=body)
    assert answer.status_code == 201, answer.text


def target(api: TestClient, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(t for t in api.get(f"{API}/targets").json() if t["name"] == name)
    return found


@BOTH
def test_a_failed_backup_is_mailed_once_even_across_a_restart(
    tmp_path: Path, site_database_url: str, nhub: Hub, napi: TestClient
) -> None:
    with smtp_server() as box:
        add_smtp(napi, box)
        add_rule(napi, "web-failures", "ops", ["failed"], vm_pattern="web-*")
        jobs = fail_backups(napi, ["web-01", "db-01"])  # db-01 is not the rule's
        nhub.notifier.tick()
        assert len(box.mails) == 1
        mail = box.texts()[0]
        assert "web-01" in mail
        assert "db-01" not in mail
        assert jobs[0]["error"] in mail
        assert NODE_DOWN in mail
        assert box.mails[0]["To"] == "ops@example.test"
        assert target(napi, "ops")["last_sent_at"] is not None

        nhub.notifier.tick()
        assert len(box.mails) == 1  # told once

        # Another hub process on the same database and data directory: a new notifier.
        again = open_hub(tmp_path, site_database_url)
        try:
            again.notifier.tick()
            again.notifier.tick(utcnow() + timedelta(minutes=5))
        finally:
            again.close()
        assert len(box.mails) == 1


def test_a_webhook_is_signed_with_the_key_shown_once_and_retried_after_a_500(
    nhub: Hub, napi: TestClient
) -> None:
    with http_receiver() as receiver:
        created = napi.post(
            f"{API}/targets", json={"name": "hook", "webhook": {"url": receiver.url}}
        )
        assert created.status_code == 201, created.text
        key = created.json()["secret"]
        assert len(key) >= 32
        assert key not in napi.get(f"{API}/targets").text
        add_rule(napi, "all-failures", "hook", ["failed"])
        receiver.statuses = [500, 503]
        fail_backups(napi, ["app-01"])
        nhub.notifier.tick()
        assert len(receiver.posts) == 3  # 500, 503, then 200
        assert len({p.body for p in receiver.posts}) == 1
        post = receiver.posts[-1]
        expected = "sha256=" + hmac.new(key.encode(), post.body, hashlib.sha256).hexdigest()
        assert post.headers["X-Sendense-Signature"] == expected
        payload = json.loads(post.body)
        assert payload["type"] == "event"
        assert payload["events"][0]["vm"] == "app-01"
        assert payload["events"][0]["event"] == "failed"
        assert NODE_DOWN in payload["events"][0]["error"]
        shown = target(napi, "hook")
        assert shown["last_error"] is None
        assert shown["last_sent_at"] is not None


def test_a_webhook_that_keeps_failing_is_a_recorded_warning(
    nhub: Hub, napi: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with http_receiver() as receiver:
        napi.post(f"{API}/targets", json={"name": "hook", "webhook": {"url": receiver.url}})
        add_rule(napi, "all-failures", "hook", ["failed"])
        receiver.statuses = [500] * 10
        fail_backups(napi, ["app-02"])
        with caplog.at_level(logging.WARNING):
            nhub.notifier.tick()
        assert len(receiver.posts) == 4  # the first try and three more
        shown = target(napi, "hook")
        assert shown["last_error"] == "webhook at " + receiver.url.split("/")[2] + " answered 500"
        assert "/hooks/" not in shown["last_error"]
        assert "answered 500" in caplog.text
        nhub.notifier.tick()  # a failing target waits before it is tried again
        assert len(receiver.posts) == 4
        # The operator's test button tries once and answers at once: 502, the reason.
        tested = napi.post(f"{API}/targets/hook/test")
        assert tested.status_code == 502, tested.text
        assert "answered 500" in tested.json()["message"]
        assert len(receiver.posts) == 5
        receiver.statuses = []
        nhub.notifier.tick(utcnow() + timedelta(minutes=6))
        assert len(receiver.posts) == 6  # delivered at last, not lost


@BOTH
def test_fifty_failures_in_a_minute_make_one_digest(nhub: Hub, napi: TestClient) -> None:
    with smtp_server() as box:
        add_smtp(napi, box)
        add_rule(napi, "failures", "ops", ["failed"])
        vms = [f"storm-{n:02d}" for n in range(50)]
        began = time.monotonic()
        fail_backups(napi, vms)
        took = time.monotonic() - began
        assert took < 60, took
        print(f"50 backups failed in {took:.1f} s")
        nhub.notifier.tick()
        assert len(box.mails) == 1
        digest = box.texts()[0]
        assert "50 events: 50 failed" in str(box.mails[0]["Subject"])
        assert all(vm in digest for vm in vms)
        # Within the same minute, one more failure waits for the window's end.
        fail_backups(napi, ["storm-late"])
        nhub.notifier.tick()
        assert len(box.mails) == 1
        nhub.notifier.tick(utcnow() + timedelta(seconds=61))
        assert len(box.mails) == 2
        assert "storm-late" in box.texts()[1]
        assert "digest" not in str(box.mails[1]["Subject"])


def test_an_smtp_server_that_refuses_the_login_is_a_warning_not_a_crash(
    nhub: Hub, napi: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    password = "smtp-Pa55word-never-shown"
    with smtp_server(refuse_logins=True) as box:
        add_smtp(napi, box, username="notifier", password=password)
        add_rule(napi, "failures", "ops", ["failed"])
        tested = napi.post(f"{API}/targets/ops/test")
        assert tested.status_code == 502
        assert tested.json()["error"] == "delivery_failed"
        assert "refused the login: 535" in tested.json()["message"]
        tries = len(box.logins)
        assert tries >= 1
        assert set(box.logins) == {"notifier"}
        with caplog.at_level(logging.DEBUG):
            (failed,) = fail_backups(napi, ["web-09"])
            nhub.notifier.tick(utcnow() + timedelta(minutes=6))
            nhub.notifier.tick(utcnow() + timedelta(minutes=12))  # tried again
        assert len(box.logins) > tries  # the notifier tried too
        assert box.mails == []
        # The failed task says its notification did not go, once however often tried.
        log = napi.get(f"/api/v1/tasks/{failed['id']}/log").json()["lines"]
        warned = [x for x in log if "notification to target ops not delivered" in x["message"]]
        assert len(warned) == 1, log
        assert warned[0]["level"] == "WARNING"
        assert "refused the login" in warned[0]["message"]
        task = napi.get(f"/api/v1/tasks/{failed['id']}").json()
        assert task["error_code"] == "unavailable", task  # stable, beside the message
        shown = target(napi, "ops")
        assert "refused the login" in shown["last_error"]
        assert shown["last_error_at"] is not None
        assert napi.get("/api/v1/health").status_code == 200
        everything = napi.get(f"{API}/targets").text + tested.text + caplog.text
        assert password not in everything


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_a_login_over_tls_checked_against_a_ca_file(
    security: str, nhub: Hub, napi: TestClient, tmp_path: Path
) -> None:
    cert, key = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    ensure_self_signed(cert, key, "127.0.0.1")
    password = "tls-login-Pa55"
    with smtp_server(password=password, tls=security, cert=(cert, key)) as box:
        login = {"username": "notifier", "password": password, "security": security}
        add_smtp(napi, box, "checked", **login, ca_file=str(cert))
        add_smtp(napi, box, "unchecked", **login)  # the system's CAs do not know it
        assert napi.post(f"{API}/targets/checked/test").status_code == 200
        assert len(box.mails) == 1
        assert "test message" in str(box.mails[0]["Subject"])
        refused = napi.post(f"{API}/targets/unchecked/test")
        assert refused.status_code == 502
        assert "CERTIFICATE_VERIFY_FAILED" in refused.json()["message"]
        assert len(box.mails) == 1
        assert password not in refused.text
    bad = {"host": "127.0.0.1", "sender": "a@b.test", "recipients": ["c@d.test"]}
    for ca_file in ("relative.crt", str(tmp_path / "missing.crt")):
        answer = napi.post(
            f"{API}/targets", json={"name": "x", "smtp": {**bad, "ca_file": ca_file}}
        )
        assert answer.status_code == 422, answer.text


@BOTH
def test_the_daily_report_lists_each_vm_s_last_success_and_the_day_s_failures(
    nhub: Hub, napi: TestClient, repo_dir: Path
) -> None:
    napi.post("/api/v1/repositories", json={"path": str(repo_dir)})
    job = napi.post("/api/v1/jobs", json={"vm_name": "db-01", "disks": DISKS}).json()
    done = {"2000": {"change_id": "c1", "data_bytes": 65536, "duration_s": 1.5}}
    finished = napi.post(
        f"/api/v1/jobs/{job['job_id']}/finish", json={"success": True, "disks": done}
    )
    assert finished.status_code == 200, finished.text
    failed = fail_backups(napi, ["web-01"])
    policy = {"name": "nightly", "keep_last": 3, "schedule": "0 1 * * *"}
    assert napi.post("/api/v1/policies", json=policy).status_code == 201
    assign = {"kind": "pattern", "value": "*-01"}
    assert napi.post("/api/v1/policies/nightly/assignments", json=assign).status_code == 200
    with smtp_server() as box:
        add_smtp(napi, box)
        add_rule(napi, "report", "ops", ["daily_report"])
        nhub.notifier.tick()
        assert len(box.mails) == 1
        report = box.texts()[0]
        assert "daily report" in str(box.mails[0]["Subject"])
        assert "db-01: last success" in report
        assert "size 65536 bytes" in report
        assert "size 65536 bytes, duration" in report
        assert "policy nightly (0 1 * * *): on schedule" in report
        assert "web-01: no good backup, policy nightly (0 1 * * *): overdue" in report
        assert "Failures in the 24 hours" in report
        assert f"backup of web-01: {failed[0]['error']}" in report
        nhub.notifier.tick()
        assert len(box.mails) == 1  # once a day
        nhub.notifier.tick(utcnow() + timedelta(days=1))
        assert len(box.mails) == 2


@BOTH
def test_conditions_are_told_once_while_they_hold(nhub: Hub, napi: TestClient) -> None:
    with http_receiver() as receiver:
        napi.post(f"{API}/targets", json={"name": "hook", "webhook": {"url": receiver.url}})
        add_rule(napi, "node", "hook", ["node_disconnected"], node_down_minutes=5)
        add_rule(napi, "stale", "hook", ["stale_vm"], max_age_hours=1, vm_pattern="web-*")
        fail_backups(napi, ["web-01"])
        nhub.notifier.tick()
        events = [e for p in receiver.posts for e in json.loads(p.body)["events"]]
        assert [e["event"] for e in events] == ["node_disconnected"]  # never connected
        assert events[0]["node"] == "site-a"
        later = utcnow() + timedelta(hours=2)
        nhub.notifier.tick(later)
        events = [e for p in receiver.posts for e in json.loads(p.body)["events"]]
        assert [e["event"] for e in events] == ["node_disconnected", "stale_vm"]
        assert events[1]["vm"] == "web-01"
        nhub.notifier.tick(later + timedelta(minutes=1))
        assert len(receiver.posts) == 2


def test_bad_input_is_a_clear_4xx(napi: TestClient) -> None:
    def post(path: str, body: dict[str, Any]) -> tuple[int, str]:
        answer = napi.post(f"{API}/{path}", json=body)
        return answer.status_code, answer.json().get("message", "")

    smtp = {"host": "mail.example.test", "sender": "a@b.test", "recipients": ["c@d.test"]}
    assert post("targets", {"name": "h", "webhook": {"url": "ftp://x/y"}})[0] == 422
    assert post("targets", {"name": "h", "webhook": {"url": "file:///etc/passwd"}})[0] == 422
    assert post("targets", {"name": "h"})[0] == 422
    status, message = post(
        "targets",
        {"name": "m", "smtp": {**smtp, "security": "none", "username": "u", "password": "pw12"}},
    )
    assert (status, "loopback" in message) == (422, True)
    assert post("targets", {"name": "m", "smtp": {**smtp, "username": "u"}})[0] == 422
    assert post("targets", {"name": "bad name!", "smtp": smtp})[0] == 422
    injected = {**smtp, "recipients": ["c@d.test\nBcc: e@f.test"]}
    assert post("targets", {"name": "m", "smtp": injected})[0] == 422
    assert post("targets", {"name": "m", "smtp": smtp})[0] == 201
    assert post("targets", {"name": "m", "smtp": smtp})[0] == 409
    assert post("rules", {"name": "r", "target": "nope", "events": ["failed"]})[0] == 404
    status, message = post("rules", {"name": "r", "target": "m", "events": ["exploded"]})
    assert (status, "unknown event" in message) == (422, True)
    status, message = post("rules", {"name": "r", "target": "m", "events": ["stale_vm"]})
    assert (status, "max_age_hours" in message) == (422, True)
    body = {"name": "r", "target": "m", "events": ["failed"], "kinds": ["coffee"]}
    assert post("rules", body)[0] == 422
    assert napi.post(f"{API}/targets/nope/test").status_code == 404
    assert napi.delete(f"{API}/rules/nope").status_code == 404
    assert napi.delete(f"{API}/targets/m").json()["name"] == "m"


@BOTH
def test_two_hubs_on_one_database_send_each_notification_once(
    tmp_path: Path, site_database_url: str, nhub: Hub, napi: TestClient
) -> None:
    other = open_hub(tmp_path / "other", site_database_url)
    assert other.db.owner != nhub.db.owner
    try:
        with smtp_server() as box:
            add_smtp(napi, box)
            add_rule(napi, "failures", "ops", ["failed"])
            for round_ in range(3):
                fail_backups(napi, [f"twin-{round_}"])
                ticks = [threading.Thread(target=h.notifier.tick) for h in (nhub, other)]
                for thread in ticks:
                    thread.start()
                for thread in ticks:
                    thread.join(timeout=60)
                assert len(box.mails) == round_ + 1
    finally:
        other.close()


def test_the_cli_sets_notifications_up_and_the_hub_s_loop_sends_them(
    tmp_path: Path, sqlite_url: str, repo_dir: Path
) -> None:
    hub = HubProcess(tmp_path / "data", sqlite_url)
    hub.env["SENDENSE_HUB_NOTIFY_TICK_S"] = "0.5"
    hub.start()
    try:
        env = hub.cli_env(hub.initial_token())
        with http_receiver() as receiver, smtp_server(refuse_logins=True) as box:
            added = sendense("notify", "target", "add-webhook", "hook", receiver.url, env=env)
            assert added.returncode == 0, added.stderr
            key = added.stdout.strip()
            rule = ["notify", "rule", "add", "fails", "--target", "hook", "--event", "failed"]
            assert sendense(*rule, "--kind", "backup", env=env).returncode == 0
            tested = sendense("notify", "test", "hook", env=env)
            assert tested.returncode == 0, tested.stderr
            assert json.loads(receiver.posts[0].body)["type"] == "test"

            password = "cli-smtp-secret-0987"
            smtp = ["notify", "target", "add-smtp", "mail", "--host", "127.0.0.1"]
            smtp += ["--port", str(box.port), "--security", "none", "--from", "hub@x.test"]
            smtp += ["--to", "ops@x.test", "--user", "notifier"]
            missing = sendense(*smtp, env=env)
            assert missing.returncode == 2
            assert "SENDENSE_SMTP_PASSWORD" in missing.stderr
            made = sendense(*smtp, env={**env, "SENDENSE_SMTP_PASSWORD": password})
            assert made.returncode == 0, made.stderr
            refused = sendense("notify", "test", "mail", env=env)
            assert refused.returncode == 1
            assert refused.stderr.startswith("error: ")
            assert "refused the login" in refused.stderr
            assert refused.stderr.strip().count("\n") == 0
            unknown = sendense("notify", "test", "nope", env=env)
            assert unknown.returncode == 3
            listed = sendense("notify", "target", "list", env=env)
            assert "refused the login" in listed.stdout

            with hub.client(hub.initial_token()) as client:
                client.post("/api/v1/repositories", json={"path": str(repo_dir)})
                job = client.post("/api/v1/jobs", json={"vm_name": "far-01", "disks": DISKS})
                finish = {"success": False, "error": "the source went away"}
                client.post(f"/api/v1/jobs/{job.json()['job_id']}/finish", json=finish)
            deadline = time.monotonic() + 30
            while len(receiver.posts) < 2:
                assert time.monotonic() < deadline, "the hub's notifier sent nothing"
                time.sleep(0.1)
            post = receiver.posts[1]
            signed = "sha256=" + hmac.new(key.encode(), post.body, hashlib.sha256).hexdigest()
            assert post.headers["X-Sendense-Signature"] == signed
            assert json.loads(post.body)["events"][0]["error"] == "the source went away"
        log = hub.log.read_text()
        assert password not in log
        assert key not in log
    finally:
        hub.stop()


def backup_from_outside(api: TestClient, vm: str, **disk: Any) -> str:
    job = api.post("/api/v1/jobs", json={"vm_name": vm, "disks": DISKS}).json()
    finish = {"success": True, "disks": {"2000": {"change_id": "c1", **disk}}}
    done = api.post(f"/api/v1/jobs/{job['job_id']}/finish", json=finish)
    assert done.status_code == 200, done.text
    point: str = job["restore_point_id"]
    return point


def test_successes_warnings_invalid_points_and_a_full_repository(
    nhub: Hub, napi: TestClient, repo_dir: Path
) -> None:
    napi.post("/api/v1/repositories", json={"path": str(repo_dir), "name": "main"})
    with http_receiver() as receiver:
        napi.post(f"{API}/targets", json={"name": "hook", "webhook": {"url": receiver.url}})
        add_rule(napi, "backups", "hook", ["succeeded", "warning"], kinds=["backup"])
        add_rule(
            napi, "damage", "hook", ["invalid_point", "repository_full"], free_below_percent=100
        )
        backup_from_outside(napi, "ok-01")
        backup_from_outside(napi, "wide-01", full_reason="CBT was reset")
        # A checksum the image does not have: verification finds the point invalid.
        bad = backup_from_outside(
            napi, "bad-01", checksum="0" * 64, areas=[[0, 65536]], checksum_block=65536
        )
        queued = napi.post("/api/v1/verify", json={"target": bad}).json()
        deadline = time.monotonic() + 60
        while napi.get(f"/api/v1/jobs/{queued['job_id']}").json()["state"] != "complete":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert napi.get(f"/api/v1/restore-points/{bad}").json()["status"] == "invalid"
        nhub.notifier.tick()
        events = {
            (e["event"], e.get("vm") or e.get("repository"))
            for p in receiver.posts
            for e in json.loads(p.body)["events"]
        }
        assert events == {
            ("succeeded", "ok-01"),
            ("succeeded", "bad-01"),
            ("warning", "wide-01"),
            ("invalid_point", "bad-01"),
            ("repository_full", "main"),
        }
        nhub.notifier.tick()
        assert len(receiver.posts) == 5
