"""The appliance's boot files, made once per machine with an unpacked kernel.

Without KVM the appliance runs under TCG, where the kernel unpacking itself
(Debian's is xz-compressed) is about a third of every launch. A kernel built
with a PVH entry (CONFIG_PVH, Debian's has it) boots straight from its
uncompressed ELF image. So the first launch unpacks the kernel supermin would
pick into a cache of this machine's and has supermin build the appliance with
it there (its own `--if-newer` rebuilds it when packages change); every handle
then boots that "fixed" appliance (`set_path`). A kernel this cannot unpack
(another compression, no PVH entry) is left to libguestfs' own appliance.
"""

from __future__ import annotations

import logging
import lzma
import os
import re
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
XZ_MAGIC = b"\xfd7zXZ\x00"
# An ELF note "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18): the PVH entry point.
PVH_NOTES = tuple(struct.pack("<III", 4, size, 18) + b"Xen\0" for size in (4, 8))
FIXED = "README.fixed"
_prepared: dict[Path, Path | None] = {}
_lock = threading.Lock()


def default_cache() -> Path:
    """Where libguestfs keeps its own (/var/tmp: kept across reboots); made 0700
    and refused unless this user's own, as libguestfs does."""
    base = os.environ.get("TMPDIR", "/var/tmp")  # noqa: S108 - checked in _prepare
    return Path(base) / f".sendense-appliance-{os.getuid()}"


def appliance_path(supermin_dir: Path, cache: Path | None = None) -> Path | None:
    """The fixed appliance to boot, made if needed; None to use libguestfs' own.
    `supermin_dir` is the libguestfs path holding `supermin.d`."""
    cache = cache or default_cache()
    with _lock:
        if cache not in _prepared:
            _prepared[cache] = _prepare(supermin_dir, cache)
        return _prepared[cache]


def boot_fixed(g: Any) -> None:
    """Have libguestfs handle `g` boot the unpacked-kernel appliance, when there is one."""
    fixed = appliance_path(Path(g.get_path()))
    if fixed is not None:
        g.set_path(str(fixed))


def _newest_kernel(boot: Path = Path("/boot"), modules: Path = Path("/lib/modules")) -> Path | None:
    def version_key(path: Path) -> list[int | str]:
        parts = re.split(r"(\d+)", path.name.removeprefix("vmlinuz-"))
        return [int(p) if p.isdigit() else p for p in parts if p]

    found = [k for k in boot.glob("vmlinuz-*") if (modules / k.name[len("vmlinuz-") :]).is_dir()]
    return max(found, key=version_key, default=None)


def unpack_kernel(kernel: Path, out: Path) -> bool:
    """`kernel`'s ELF image written to `out`; False when it cannot boot that way."""
    packed = kernel.read_bytes()
    start = packed.find(XZ_MAGIC)
    if start < 0:
        return False
    try:
        image = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(packed[start:])
    except lzma.LZMAError:
        return False
    if not image.startswith(b"\x7fELF") or not any(note in image for note in PVH_NOTES):
        return False
    part = out.with_name(f".{out.name}.{os.getpid()}")
    part.write_bytes(image)
    part.replace(out)
    return True


def _prepare(supermin_dir: Path, cache: Path) -> Path | None:
    kernel = _newest_kernel()
    if kernel is None:
        return None
    version = kernel.name.removeprefix("vmlinuz-")
    try:
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        mine = cache.lstat()
        if mine.st_uid != os.getuid() or mine.st_mode & 0o077 or cache.is_symlink():
            log.warning("file restore: %s is not this user's own; libguestfs' appliance", cache)
            return None
        unpacked = cache / f"vmlinux-{version}"
        if not unpacked.exists() and not unpack_kernel(kernel, unpacked):
            log.info("file restore: kernel %s cannot boot unpacked; libguestfs' appliance", kernel)
            return None
        out = cache / "appliance.d"
        env = os.environ | {
            "SUPERMIN_KERNEL": str(unpacked),
            "SUPERMIN_KERNEL_VERSION": version,
            "SUPERMIN_MODULES": f"/lib/modules/{version}",
        }
        subprocess.run(
            [
                "supermin",
                "--build",
                "--if-newer",
                "--lock",
                str(cache / "lock"),
                "--copy-kernel",
                "-f",
                "ext2",
                str(supermin_dir / "supermin.d"),
                "-o",
                str(out),
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=600,
        )
        (out / FIXED).touch()
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("file restore: no unpacked-kernel appliance (%s); libguestfs' own", exc)
        return None
    log.info("file restore: appliance with an unpacked kernel at %s", out)
    return out
