"""The hub API speaks TLS (issue 12, point 1): a certificate made at first start
(or the operator's), its SHA-256 printed by `hub pair` and pinned by `node
enroll` before anything secret is sent, the CLI verifying it with
SENDENSE_HUB_FINGERPRINT or SENDENSE_HUB_CA; plain HTTP only on loopback, where
the Host header must name that address."""

from __future__ import annotations

import ssl
import stat
import time
from pathlib import Path

import httpx
import pytest

from sendense.common.tls import (
    cert_file_fingerprint,
    display_fingerprint,
    ensure_self_signed,
    pem_fingerprint,
)
from tests.rig.cli import sendense
from tests.rig.hub import HubProcess
from tests.rig.net import free_port
from tests.rig.node import NodeProcesses
from tests.rig.site import Site

WRONG = display_fingerprint("ab" * 32)


@pytest.fixture
def site(bare_site: Site) -> Site:
    return bare_site


def served_sha256(hub: HubProcess) -> str:
    return pem_fingerprint(ssl.get_server_certificate(("127.0.0.1", hub.port)))


def test_the_api_answers_tls_only_with_its_own_certificate(site: Site) -> None:
    plain = site.hub.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{plain}/api/v1/health", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{site.hub.url}/api/v1/health", timeout=5)  # the system's CAs
    assert site.api.get("/api/v1/health").status_code == 200
    key = site.hub.data_dir / "tls" / "hub.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert served_sha256(site.hub) == cert_file_fingerprint(site.hub.cert)


def test_pair_prints_the_served_certificate_next_to_the_host_key(site: Site) -> None:
    site.pair()
    assert site.hub_fingerprint.startswith("SHA256:")
    assert site.hub_cert_sha256 == display_fingerprint(served_sha256(site.hub))


def test_enroll_with_a_wrong_certificate_sends_nothing(site: Site) -> None:
    code = site.pair()
    node = site.node
    wrong = node.enroll(site.hub.url, code, site.name, site.hub_fingerprint, WRONG)
    assert wrong.returncode == 11, wrong.stderr
    assert wrong.stderr.count("\n") == 1
    assert "Traceback" not in wrong.stderr
    assert WRONG in wrong.stderr
    assert display_fingerprint(served_sha256(site.hub)) in wrong.stderr
    assert not (node.data_dir / "tunnel" / "tunnel.json").exists()
    assert not (node.data_dir / "tunnel" / "known_hosts").exists()
    assert site.api.get("/api/v1/nodes").json() == []

    unpinned = node.enroll(site.hub.url, code, site.name, site.hub_fingerprint)
    assert unpinned.returncode == 2
    assert "--hub-cert-sha256" in unpinned.stderr
    plain = node.enroll(site.hub.url.replace("https", "http"), code, site.name)
    assert plain.returncode == 2
    assert "TLS" in plain.stderr

    # The code was never sent: it still enrolls the node, which keeps the pin.
    right = site.enroll(code)
    assert right.returncode == 0, right.stderr
    assert "tunnel.json" in {p.name for p in (node.data_dir / "tunnel").iterdir()}
    saved = (node.data_dir / "tunnel" / "tunnel.json").read_text()
    assert served_sha256(site.hub) in saved


def test_insecure_enrollment_says_it_is_for_labs(site: Site, tmp_path: Path) -> None:
    code = site.pair()
    lab = NodeProcesses(tmp_path / "lab").enroll(
        site.hub.url, code, "lab", None, None, "--insecure"
    )
    assert lab.returncode == 0, lab.stderr
    assert "labs" in lab.stderr
    assert "unchecked" in lab.stderr


def test_the_cli_verifies_the_hub(site: Site) -> None:
    env = site.cli_env()
    assert sendense("ports", env=env).returncode == 0

    wrong = sendense("ports", env=env | {"SENDENSE_HUB_FINGERPRINT": WRONG})
    assert wrong.returncode == 11
    assert wrong.stderr.startswith("error: ")
    assert wrong.stderr.count("\n") == 1
    assert WRONG in wrong.stderr

    unpinned = {k: v for k, v in env.items() if k != "SENDENSE_HUB_FINGERPRINT"}
    untrusted = sendense("ports", env=unpinned)
    assert untrusted.returncode == 9
    assert untrusted.stderr.count("\n") == 1
    assert "SENDENSE_HUB_FINGERPRINT" in untrusted.stderr

    by_ca = sendense("ports", env=unpinned | {"SENDENSE_HUB_CA": str(site.hub.cert)})
    assert by_ca.returncode == 0, by_ca.stderr

    clear = sendense("ports", env=env | {"SENDENSE_HUB_URL": "http://192.0.2.1:8082"})
    assert clear.returncode == 2
    assert "in clear" in clear.stderr


def test_the_operators_certificate_is_served(tmp_path: Path) -> None:
    own = tmp_path / "operator"
    own.mkdir()
    ensure_self_signed(own / "api.pem", own / "api.key", "127.0.0.1")
    hub = HubProcess(tmp_path / "hub", f"sqlite:///{tmp_path / 'hub.db'}")
    hub.env |= {
        "SENDENSE_HUB_TLS_CERT": str(own / "api.pem"),
        "SENDENSE_HUB_TLS_KEY": str(own / "api.key"),
    }
    try:
        hub.start()
        assert served_sha256(hub) == cert_file_fingerprint(own / "api.pem")
        assert not (hub.data_dir / "tls").exists()
        paired = sendense("hub", "pair", "--data-dir", str(hub.data_dir), env=hub.env)
        assert display_fingerprint(served_sha256(hub)) in paired.stderr
    finally:
        hub.stop()


def test_plain_http_on_loopback_refuses_a_foreign_host_header(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub", f"sqlite:///{tmp_path / 'hub.db'}", tls=False)
    try:
        hub.start()
        assert httpx.get(f"{hub.url}/api/v1/health").status_code == 200
        rebound = httpx.get(f"{hub.url}/api/v1/health", headers={"Host": "evil.example"})
        assert rebound.status_code == 421
        assert rebound.json()["error"] == "misdirected_request"
        sneaky = httpx.get(f"{hub.url}/api/v1/health", headers={"Host": f"evil.example:{hub.port}"})
        assert sneaky.status_code == 421
        assert not (hub.data_dir / "tls").exists()
    finally:
        hub.stop()


def test_plain_http_off_loopback_refuses_to_start(tmp_path: Path) -> None:
    refused = sendense(
        "hub",
        "serve",
        "--data-dir",
        str(tmp_path / "hub"),
        "--listen",
        f"0.0.0.0:{free_port()}",
        env={"SENDENSE_HUB_TLS": "false"},
        timeout=30,
    )
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "tls = false" in refused.stderr
    assert "0.0.0.0" in refused.stderr


def test_half_an_operator_pair_is_refused(tmp_path: Path) -> None:
    refused = sendense(
        "hub",
        "pair",
        "--data-dir",
        str(tmp_path / "hub"),
        env={"SENDENSE_HUB_TLS_CERT": str(tmp_path / "x.pem")},
    )
    assert refused.returncode == 2
    assert "tls_cert and tls_key" in refused.stderr


def test_an_idle_tls_client_does_not_hold_the_hub_up(site: Site) -> None:
    """asyncio's TLS close waits 30 s for the idle client's close_notify; the hub
    cuts idle connections instead, so it stops at once (and stops its sshd)."""
    assert site.api.get("/api/v1/health").status_code == 200  # a kept-alive connection
    proc = site.hub.proc
    assert proc is not None
    started = time.monotonic()
    proc.terminate()
    proc.wait(timeout=15)
    assert time.monotonic() - started < 10
    assert "Application shutdown complete" in site.hub.log.read_text()
