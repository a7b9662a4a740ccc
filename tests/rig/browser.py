"""Debian's Chromium driven by Playwright, headless, for the console's tests: started
per test module, closed in every outcome, and no Chromium process of its own left
behind (its own only: two modules may run browsers at once on the two workers).
Helpers to log in, run axe-core on a page, and screenshot it at a desktop's and a
phone's width."""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.rig.procs import kill_all, wait_gone

CHROMIUM = "/usr/bin/chromium"
# As root and on a closed network: no sandbox, nothing fetched in the background.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE = Path(__file__).resolve().parents[1] / ".assets" / "axe-core-4.14.1" / "axe.min.js"
WIDTHS = {"desktop": (1280, 800), "phone": (390, 844)}


TAG = "SENDENSE_BROWSER_TAG"


def chromium_pids(tag: str) -> set[int]:
    """Chromium processes of the `chromium()` that set `tag` in the browser's
    environment: those that kept it (the browser, its crash handlers) and their
    descendants (zygotes and renderers start with an environment of their own).
    Another module's browser, on the other pytest worker, is never counted."""
    marker = f"{TAG}={tag}".encode()
    parents: dict[int, int] = {}
    ours: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if not (proc / "exe").resolve().as_posix().startswith("/usr/lib/chromium/"):
                continue
            stat = (proc / "stat").read_text()
            parents[int(proc.name)] = int(stat[stat.rfind(")") + 2 :].split()[1])
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                ours.add(int(proc.name))
    grown = True
    while grown:
        more = {pid for pid, parent in parents.items() if parent in ours} - ours
        ours |= more
        grown = bool(more)
    return ours


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    tag = uuid.uuid4().hex
    mine: set[int] = set()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=ARGS, env={**os.environ, TAG: tag}
        )
        try:
            yield browser
        finally:
            mine = chromium_pids(tag)  # before closing: its children lose their parent
            browser.close()
    left = wait_gone(sorted(mine | chromium_pids(tag)), timeout=10)
    kill_all(left)
    assert not left, f"chromium processes left behind: {left}"


def new_context(browser: Browser, width: str = "desktop") -> BrowserContext:
    w, h = WIDTHS[width]
    # The hub's certificate is its own, self-signed; the test trusts it.
    context = browser.new_context(
        ignore_https_errors=True, viewport={"width": w, "height": h}, accept_downloads=True
    )
    context.set_default_timeout(30_000)
    return context


def log_in(page: Page, base: str, name: str, password: str, totp: str = "") -> None:
    page.goto(f"{base}/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password)
    if totp:
        page.get_by_label(re.compile("Authenticator code")).fill(totp)
    page.get_by_role("button", name="Log in").click()


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations of the page as it is now."""
    # Evaluated by the driver, not added as a <script>: the page's policy allows none.
    page.evaluate(f"() => {{ {AXE.read_text()}\n; window.axe = axe; }}")
    result = page.evaluate("async () => JSON.stringify(await window.axe.run(document))")
    found: list[dict[str, Any]] = json.loads(result)["violations"]
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["html"] for n in v["nodes"][:3]]}
        for v in found
        if v["impact"] in ("serious", "critical")
    ]


def screenshots(page: Page, folder: Path, name: str) -> None:
    """The page at 1280 and 390 px wide (then back to the desktop's size)."""
    folder.mkdir(parents=True, exist_ok=True)
    for label, (w, h) in WIDTHS.items():
        page.set_viewport_size({"width": w, "height": h})
        page.screenshot(path=str(folder / f"{name}-{label}.png"), full_page=True)
    page.set_viewport_size({"width": WIDTHS["desktop"][0], "height": WIDTHS["desktop"][1]})
