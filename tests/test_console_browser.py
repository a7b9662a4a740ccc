"""The console in a real Chromium (Debian's, driven by Playwright) against a real hub,
node, tunnel and vCenter simulator: log in and out, back up from the page and see
the bar reach 100 % live, the new point on the timeline, restore it as a new VM,
download a disk, pair a node, preview a policy; the server refuses what a role
may not do and any change without the CSRF token; axe-core finds no serious
violation on any page, each screenshotted at a desktop's and a phone's width."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from sendense.hub.auth.roles import Role
from tests.rig.browser import axe_violations, chromium, log_in, new_context, screenshots
from tests.rig.hub import CREATED
from tests.rig.node import NodeProcesses
from tests.rig.node_tasks import unique
from tests.rig.site import Site
from tests.rig.vcsim import Disconnect, Vcsim
from tests.rig.vmware_vms import SCSI0, MiB, create_vm, fill, flat_file


def totp_now(uri: str) -> str:
    return pyotp.TOTP(parse_qs(urlparse(uri).query)["secret"][0]).now()


PASSWORD = "console test password 1"
PAGES = ["/", "/vms", "/tasks", "/policies", "/repositories", "/nodes", "/vcenters", "/settings"]
# `SENDENSE_SCREENSHOTS=docs/console pytest tests/test_console_browser.py` refreshes
# the README's pictures; by default they go to the test's temporary directory.
SHOTS = os.environ.get("SENDENSE_SCREENSHOTS")
# A copy slow enough to be seen running (and screenshotted) for a few seconds.
SLOW = {"chunk_mib": "1", "readers_per_disk": "1", "writes_in_flight": "1"}


class Console:
    """One site for the module (its processes are slow to start), its users, and
    the VM the tests back up."""

    def __init__(self, site: Site, root: Path, vm: str, disks: dict[int, bytes]) -> None:
        self.site = site
        self.root = root
        self.url = site.hub.url
        self.vm = vm
        self.disks = disks
        self.totp_uri = ""

    def hub_cli_user(self, name: str, role: Role, totp: bool = False) -> None:
        hub = self.site.hub_service()
        try:
            _, uri = hub.users.create(name, role, PASSWORD, totp=totp)
        finally:
            hub.db.dispose()
        if uri:
            self.totp_uri = uri


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, vcsim: Vcsim) -> Iterator[Console]:
    root = tmp_path_factory.mktemp("console")
    site = Site(root, None, **SLOW)
    try:
        site.start()
        CREATED.remove(site.hub)  # stopped here at the module's end, not after each test
        site.prepare(vcsim, root / "repo")
        si = vcsim.connect()
        try:
            name = unique("console")
            vm = create_vm(si, name, [(2000, 32 * MiB, SCSI0), (2001, 4 * MiB, SCSI0)], cbt=True)
            data = {2000: bytes(range(256)) * (32 * MiB // 256), 2001: b"\x5a" * (4 * MiB)}
            for key, content in data.items():
                fill(flat_file(vcsim, vm, key), [(0, content)])
        finally:
            Disconnect(si)
        made = Console(site, root, name, data)
        made.hub_cli_user("admin1", Role.ADMIN)
        made.hub_cli_user("viewer1", Role.VIEWER)
        made.hub_cli_user("totp1", Role.OPERATOR, totp=True)
        yield made
    finally:
        site.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as running:
        yield running


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = new_context(browser)
    try:
        yield context
    finally:
        context.close()


def blocked_by_policy(page: Page) -> list[str]:
    """What the page's Content-Security-Policy refused: must stay empty."""
    refused: list[str] = []
    page.on(
        "console",
        lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return refused


def admin_page(context: BrowserContext, console: Console) -> Page:
    page = context.new_page()
    log_in(page, console.url, "admin1", PASSWORD)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    return page


def test_login_refuses_a_wrong_password_requires_totp_and_logout_ends_the_session(
    console: Console, context: BrowserContext
) -> None:
    page = context.new_page()
    log_in(page, console.url, "admin1", "not the password")
    expect(page.get_by_role("alert")).to_contain_text("login failed")
    log_in(page, console.url, "totp1", PASSWORD)
    expect(page.get_by_role("alert")).to_contain_text("login failed")
    log_in(page, console.url, "totp1", PASSWORD, totp_now(console.totp_uri))
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    cookie = next(c for c in context.cookies() if c["name"] == "sendense_session")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert cookie["secure"]
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    # The old cookie no longer opens a page: the session ended on the hub.
    context.add_cookies([{"name": cookie["name"], "value": cookie["value"], "url": console.url}])
    page.goto(f"{console.url}/tasks")
    expect(page.get_by_role("button", name="Log in")).to_be_visible()


def test_back_up_now_shows_the_bar_reach_100_live_and_the_point_on_the_timeline(
    console: Console, context: BrowserContext
) -> None:
    page = admin_page(context, console)
    refused = blocked_by_policy(page)
    page.goto(f"{console.url}/vms")
    row = page.locator("#inventory tr", has_text=console.vm)
    expect(row).to_contain_text("unprotected")
    row.get_by_label(re.compile("Backup type")).select_option("full")
    row.get_by_role("button", name="Back up now").click()
    page.wait_for_url(re.compile(r"/tasks/[0-9a-f]+$"))
    page.evaluate("window.sendenseNoReload = true")  # gone if the page reloads
    bar = page.locator("#task-total")
    expect(bar).not_to_have_attribute("value", "0", timeout=60_000)
    screenshots(page, Path(SHOTS or console.root / "shots"), "task-running")
    expect(bar).to_have_attribute("value", "100", timeout=120_000)
    expect(page.locator("#task-state")).to_have_text("complete", timeout=60_000)
    assert page.evaluate("window.sendenseNoReload === true")
    expect(page.locator("#disk-bars progress")).to_have_count(2)
    expect(page.locator("#task-log li").last).to_be_visible()
    screenshots(page, Path(SHOTS or console.root / "shots"), "task")
    page.get_by_role("link", name=console.vm).click()
    expect(page.locator(".timeline .point")).to_have_count(1)
    screenshots(page, Path(SHOTS or console.root / "shots"), "timeline")
    expect(page.locator(".timeline .point").first).to_contain_text("full")
    expect(page.locator(".timeline .point").first).to_contain_text("complete")
    page.goto(f"{console.url}/")
    expect(page.locator(".tiles li", has_text=console.vm)).to_be_visible()
    screenshots(page, Path(SHOTS or console.root / "shots"), "dashboard-after-backup")
    assert refused == []


def test_a_disk_download_from_the_page_equals_the_point(
    console: Console, context: BrowserContext
) -> None:
    page = admin_page(context, console)
    page.goto(f"{console.url}/vms/{console.vm}")
    for key, data in console.disks.items():
        link = page.locator(f".disks > li:has-text('disk {key}:')").get_by_role("link", name="raw")
        with page.expect_download() as started:
            link.click()
        saved = console.root / f"download-{key}.raw"
        started.value.save_as(saved)
        assert saved.read_bytes() == data
    point = page.locator(".timeline .point").first
    point.get_by_role("button", name="Instant access").click()
    uris = point.locator(".result code")
    expect(uris.first).to_be_visible()
    shown = uris.all_inner_texts()
    assert any(u.startswith("nbds://") for u in shown), shown
    opened = console.site.api.get("/api/v1/access").json()
    assert len(opened) == 1
    assert console.site.api.delete(f"/api/v1/access/{opened[0]['id']}").status_code == 200


def test_a_restore_as_a_new_vm_completes_from_the_page(
    console: Console, context: BrowserContext, si: Any
) -> None:
    page = admin_page(context, console)
    page.goto(f"{console.url}/vms/{console.vm}")
    point = page.locator(".timeline .point").first
    point.get_by_text("Restore as a new VM").click()
    new_name = f"{console.vm}-r"
    point.get_by_label("New VM name").fill(new_name)
    point.get_by_role("button", name="Restore").click()
    page.wait_for_url(re.compile(r"/tasks/[0-9a-f]+$"))
    expect(page.locator("#task-state")).to_have_text("complete", timeout=120_000)
    restored = si.content.searchIndex.FindByInventoryPath(f"DC0/vm/{new_name}")
    assert restored is not None


def test_a_policy_edit_shows_its_preview(console: Console, context: BrowserContext) -> None:
    second = console.site.api.post("/api/v1/backups", json={"vm": console.vm})
    assert second.status_code == 202, second.text
    assert console.site.wait_job(second.json()["job_id"])["state"] == "complete"
    page = admin_page(context, console)
    page.goto(f"{console.url}/policies")
    form = page.locator("#policy-form")
    form.get_by_label("Name").fill("nightly")
    form.get_by_label(re.compile("Preview on")).select_option(console.vm)
    form.get_by_label("Keep last").fill("2")
    expect(page.locator("#preview-summary")).to_contain_text("keeps 2 of 2")
    form.get_by_label("Keep last").fill("1")
    expect(page.locator("#preview-summary")).to_contain_text("keeps 1 of 2")
    expect(page.locator("#preview .calendar li.drop")).to_have_count(1)
    form.get_by_role("button", name="Create").click()
    expect(page.locator("table", has_text="nightly")).to_be_visible()
    page.get_by_role("link", name="Edit").click()
    form = page.locator("#policy-form")
    form.get_by_label(re.compile("Preview on")).select_option(console.vm)
    form.get_by_label("Keep last").fill("2")
    expect(page.locator("#preview-summary")).to_contain_text("keeps 2 of 2")
    form.get_by_role("button", name="Save").click()
    expect(page.locator("table", has_text="nightly")).to_contain_text("last 2")


def test_a_node_is_paired_from_the_page(console: Console, context: BrowserContext) -> None:
    page = admin_page(context, console)
    page.goto(f"{console.url}/nodes")
    page.get_by_role("button", name="Make a pairing code").click()
    command = page.locator("#pair-form .result code").first.inner_text()
    words = shlex.split(command)
    code = page.locator("#pair-form .result code").nth(1).inner_text()
    pins = {w: words[i + 1] for i, w in enumerate(words) if w.startswith("--hub-")}
    second = NodeProcesses(console.root / "node2")
    name = unique("paired")
    enrolled = second.enroll(
        console.url, code, name, pins.get("--hub-fingerprint"), pins.get("--hub-cert-sha256")
    )
    assert enrolled.returncode == 0, enrolled.stderr
    page.reload()
    expect(page.locator("table", has_text=name)).to_be_visible()


def test_notifications_are_set_up_from_the_settings_page(
    console: Console, context: BrowserContext
) -> None:
    page = admin_page(context, console)
    page.goto(f"{console.url}/settings")
    webhook = page.locator("form", has=page.get_by_label("URL (https)"))
    webhook.get_by_label("Name", exact=True).fill("ops-hook")
    webhook.get_by_label("URL (https)").fill("https://hooks.example.invalid/sendense")
    webhook.get_by_role("button", name="Add").click()
    expect(webhook.locator(".result")).to_contain_text("signing key")
    page.reload()
    rule = page.locator("form", has=page.get_by_label(re.compile("^Events")))
    rule.get_by_label("Name", exact=True).fill("failures")
    rule.get_by_label(re.compile("^Events")).fill("failed, warning")
    rule.get_by_role("button", name="Add").click()
    expect(page.get_by_text("failures → ops-hook: failed, warning for *")).to_be_visible()
    bad = page.locator("form", has=page.get_by_label(re.compile("^Events")))
    bad.get_by_label("Name", exact=True).fill("nonsense")
    bad.get_by_label(re.compile("^Events")).fill("sometimes")
    bad.get_by_role("button", name="Add").click()
    expect(bad.get_by_role("alert")).to_contain_text("unknown event")
    rules = console.site.api.get("/api/v1/notifications/rules").json()
    assert [(r["name"], r["events"]) for r in rules] == [("failures", ["failed", "warning"])]


def test_the_server_refuses_a_viewer_s_forged_post_and_any_post_without_csrf(
    console: Console, context: BrowserContext
) -> None:
    page = context.new_page()
    log_in(page, console.url, "viewer1", PASSWORD)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page.get_by_role("button", name="Back up now")).to_have_count(0)
    forged = page.evaluate(
        """async (vm) => {
            const csrf = document.querySelector('meta[name="csrf-token"]').content;
            const r = await fetch('/api/v1/backups', {method: 'POST',
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf},
                body: JSON.stringify({vm: vm})});
            return [r.status, (await r.json()).message];
        }""",
        console.vm,
    )
    assert forged[0] == 403
    assert "viewer" in forged[1]
    admin = admin_page(context, console)
    bare = admin.evaluate(
        """async (vm) => {
            const r = await fetch('/api/v1/backups', {method: 'POST',
                headers: {'Content-Type': 'application/json'}, body: JSON.stringify({vm: vm})});
            return [r.status, (await r.json()).message];
        }""",
        console.vm,
    )
    assert bare[0] == 403
    assert "CSRF" in bare[1]
    tasks = console.site.api.get("/api/v1/tasks", params={"vm": console.vm, "kind": "backup"})
    # Only the backups the tests started themselves: neither POST started one.
    assert tasks.json()["total"] == 2


def test_every_page_has_no_serious_accessibility_violation_at_both_widths(
    console: Console, context: BrowserContext
) -> None:
    page = admin_page(context, console)
    refused = blocked_by_policy(page)
    folder = Path(SHOTS or console.root / "shots")
    found = {}
    tasks = console.site.api.get("/api/v1/tasks", params={"kind": "backup"}).json()["items"]
    task_pages = [f"/tasks/{tasks[0]['id']}"] if tasks else []
    for path in [*PAGES, "/audit", f"/vms/{console.vm}", *task_pages, "/login?next=/"]:
        page.goto(f"{console.url}{path}")
        page.wait_for_load_state("networkidle")
        name = path.strip("/").split("?")[0].replace("/", "-") or "dashboard"
        screenshots(page, folder, name)
        found[path] = axe_violations(page)
        page.set_viewport_size({"width": 390, "height": 844})
        found[f"{path} (390 px)"] = axe_violations(page)
        page.set_viewport_size({"width": 1280, "height": 800})
    assert {p: v for p, v in found.items() if v} == {}
    assert len(list(folder.glob("*-phone.png"))) >= len(PAGES)
    assert refused == []
