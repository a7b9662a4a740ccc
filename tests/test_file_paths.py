"""The hub's own part of file-level restore, without an appliance: paths are
resolved inside their filesystem (links followed as the guest sees them, nothing
escapes), and a folder's tar stream becomes a zip with the same names, modes,
times and links."""

from __future__ import annotations

import io
import stat
import tarfile
import time
import zipfile

import pytest

from sendense.common.errors import InvalidInput, NotFound
from sendense.hub.files.archive import tar_to_zip
from sendense.hub.files.paths import PathEscapes, clean, resolve

# A guest filesystem: path -> link target, or None for a file or folder.
GUEST: dict[str, str | None] = {
    "/etc": None,
    "/etc/hostname": None,
    "/etc/localtime": "/usr/share/zoneinfo/UTC",
    "/usr": None,
    "/usr/share": None,
    "/usr/share/zoneinfo": None,
    "/usr/share/zoneinfo/UTC": None,
    "/var": None,
    "/var/www": "../srv/www",
    "/srv": None,
    "/srv/www": None,
    "/srv/www/index.html": None,
    "/up": "../../../etc/shadow",
    "/loop": "/loop",
    "/dangling": "/nowhere",
}


def walk(path: str, follow_last: bool = True) -> str:
    def is_link(p: str) -> bool | None:
        return None if p not in GUEST else GUEST[p] is not None

    def readlink(p: str) -> str:
        target = GUEST[p]
        assert target is not None
        return target

    return resolve(path, is_link, readlink, follow_last=follow_last)


def test_links_are_followed_as_the_guest_sees_them() -> None:
    assert walk("/etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert walk("/var/www/index.html") == "/srv/www/index.html"
    assert walk("/etc/localtime", follow_last=False) == "/etc/localtime"
    assert walk("//etc/./hostname") == "/etc/hostname"
    assert walk("/") == "/"


@pytest.mark.parametrize("path", ["/../etc/passwd", "/etc/../../x", ".."])
def test_dot_dot_in_a_path_is_refused(path: str) -> None:
    with pytest.raises(PathEscapes, match=r"'\.\.'"):
        walk(path)


def test_a_link_that_climbs_out_is_refused_and_loops_end() -> None:
    with pytest.raises(PathEscapes, match="outside its filesystem"):
        walk("/up")
    with pytest.raises(InvalidInput, match="too many levels"):
        walk("/loop")
    with pytest.raises(NotFound):
        walk("/dangling")
    with pytest.raises(NotFound):
        walk("/etc/missing")


def test_odd_paths_get_a_clear_error() -> None:
    with pytest.raises(InvalidInput, match="NUL"):
        clean("/etc/\0")
    with pytest.raises(InvalidInput, match="4096"):
        clean("/" + "a" * 5000)


def tar_of(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return out.getvalue()


def member(
    name: str, kind: bytes, mode: int, data: bytes = b"", link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.size = kind, mode, 1_600_000_000, len(data)
    info.linkname = link
    return info, data


def test_a_tar_stream_becomes_the_same_zip() -> None:
    big = bytes(range(256)) * 20_000  # several chunks
    tar = tar_of(
        [
            member("./", tarfile.DIRTYPE, 0o755),
            member("./docs", tarfile.DIRTYPE, 0o750),
            member("./docs/é.txt", tarfile.REGTYPE, 0o640, b"hello"),
            member("./big.bin", tarfile.REGTYPE, 0o600, big),
            member("./link", tarfile.SYMTYPE, 0o777, link="docs/é.txt"),
            member("./fifo", tarfile.FIFOTYPE, 0o644),
        ]
    )
    chunks = (tar[i : i + 7000] for i in range(0, len(tar), 7000))
    made = b"".join(tar_to_zip(chunks))
    with zipfile.ZipFile(io.BytesIO(made)) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == ["docs/", "docs/é.txt", "big.bin", "link"]
        assert archive.read("docs/é.txt") == b"hello"
        assert archive.read("big.bin") == big
        assert archive.read("link") == "docs/é.txt".encode()
        modes = {i.filename: i.external_attr >> 16 for i in archive.infolist()}
        assert modes["docs/"] == stat.S_IFDIR | 0o750
        assert modes["docs/é.txt"] == stat.S_IFREG | 0o640
        assert stat.S_ISLNK(modes["link"])
        when = time.gmtime(1_600_000_000)[:6]
        assert archive.getinfo("docs/é.txt").date_time == when
