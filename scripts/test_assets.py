"""Fetch what the browser tests use and the repository does not hold: axe-core,
from the npm registry at a pinned version, checked against the registry's
integrity digest before anything is unpacked. Quick when already there."""

from __future__ import annotations

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "tests" / ".assets"
AXE_VERSION = "4.14.1"
AXE_URL = f"https://registry.npmjs.org/axe-core/-/axe-core-{AXE_VERSION}.tgz"
AXE_SHA512 = "FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ=="
AXE = ASSETS / f"axe-core-{AXE_VERSION}" / "axe.min.js"


def fetch_axe() -> None:
    if AXE.exists():
        return
    with urllib.request.urlopen(AXE_URL, timeout=60) as answer:  # noqa: S310 (a fixed https URL)
        tarball = answer.read()
    digest = base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if digest != AXE_SHA512:
        sys.exit(f"axe-core {AXE_VERSION}: the tarball's sha512 is {digest}, not the pinned one")
    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        for name in ("package/axe.min.js", "package/LICENSE"):
            member = archive.extractfile(name)
            assert member is not None, name
            target = AXE.parent / Path(name).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(member.read())


if __name__ == "__main__":
    fetch_axe()
