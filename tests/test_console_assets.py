"""The console's third-party files are what their pinned npm packages hold: each
matches its digest in SHA256SUMS, every vendored file is listed, each package
carries its licence, and the pages load nothing from another site."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import sendense.hub.console

CONSOLE = Path(sendense.hub.console.__file__).parent
VENDOR = CONSOLE / "static" / "vendor"


def listed() -> dict[str, str]:
    sums = {}
    for line in (VENDOR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.strip()] = digest
    return sums


def test_every_vendored_file_matches_its_pinned_digest() -> None:
    sums = listed()
    present = {
        p.relative_to(VENDOR).as_posix()
        for p in VENDOR.rglob("*")
        if p.is_file() and p.name not in ("SHA256SUMS", "README.md")
    }
    assert present == set(sums)
    for name, digest in sums.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name


def test_each_vendored_package_has_its_licence_and_a_version_in_its_folder() -> None:
    for folder in (p for p in VENDOR.iterdir() if p.is_dir()):
        assert re.fullmatch(r"[a-z.]+-\d+\.\d+\.\d+", folder.name), folder.name
        assert (folder / "LICENSE").read_text().strip()
        assert folder.name.rsplit("-", 1)[0] in (VENDOR / "README.md").read_text()


def test_templates_load_scripts_and_sheets_only_from_the_hub() -> None:
    for template in (CONSOLE / "templates").glob("*.html"):
        text = template.read_text()
        for src in re.findall(r'(?:src|href)="([^"{]+)"', text):
            assert src.startswith(("/", "#")), (template.name, src)
        assert "<script>" not in text, template.name  # no inline script (the CSP allows none)
        assert " style=" not in text, template.name
