"""A folder as a zip, made on the fly from the appliance's tar stream: each
member is read from the tar and written to the zip as it passes, with its mode,
its time and (the Info-ZIP way) its symbolic links; nothing is kept whole in
memory or on disk."""

from __future__ import annotations

import stat
import tarfile
import time
import zipfile
from collections.abc import Iterator

CHUNK = 1 << 20
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold


class _Chunks:
    """A readable file over an iterator of byte strings (what tarfile reads)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


class _Sink:
    """Where the zip is written; `take` hands over what came since last time."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0

    def write(self, data: bytes, /) -> int:
        self._parts.append(bytes(data))
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def _info(member: tarfile.TarInfo) -> zipfile.ZipInfo | None:
    name = member.name.removeprefix("./").lstrip("/")
    if not name or name == ".":
        return None
    when = time.gmtime(max(member.mtime, 315532800))[:6]  # 1980-01-01
    kind = stat.S_IFDIR if member.isdir() else stat.S_IFLNK if member.issym() else stat.S_IFREG
    info = zipfile.ZipInfo(name + "/" if member.isdir() else name, date_time=when)
    info.create_system = 3  # Unix: the external attributes hold the mode
    info.external_attr = ((kind | (member.mode & 0o7777)) << 16) | (0x10 if member.isdir() else 0)
    info.compress_type = zipfile.ZIP_STORED if member.isdir() else zipfile.ZIP_DEFLATED
    return info


def tar_to_zip(tar_chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The zip of the tar stream `tar_chunks`, as it is made. Members other than
    folders, files and symbolic links (devices, fifos) are left out."""
    sink = _Sink()
    with (
        tarfile.open(fileobj=_Chunks(tar_chunks), mode="r|") as tar,  # type: ignore[call-overload]
        zipfile.ZipFile(sink, "w", compresslevel=1) as out,
    ):
        for member in tar:
            if not (member.isdir() or member.isreg() or member.issym()):
                continue
            info = _info(member)
            if info is None:
                continue
            if member.isdir():
                out.writestr(info, b"")
            elif member.issym():
                out.writestr(info, member.linkname.encode())
            else:
                source = tar.extractfile(member)
                with out.open(info, "w", force_zip64=member.size >= 1 << 31) as dest:
                    while source is not None and (chunk := source.read(CHUNK)):
                        dest.write(chunk)
                        yield sink.take()
            yield sink.take()
    yield sink.take()
