"""The NBD wire protocol: constants, errors, the URI, and the fixed-newstyle
handshake with NBD_OPT_GO (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md).
The transmission phase lives in client.py."""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from sendense.nbd.errors import NbdConnectError, NbdUriError

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
OPT_GO, REP_ACK, REP_INFO = 7, 1, 3
INFO_EXPORT, INFO_BLOCK_SIZE = 0, 3
F_READ_ONLY, F_SEND_FLUSH, F_SEND_WRITE_ZEROES = 1 << 1, 1 << 2, 1 << 6
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_WRITE_ZEROES = 0, 1, 2, 3, 6
CMD_NAMES = {0: "READ", 1: "WRITE", 2: "DISC", 3: "FLUSH", 6: "WRITE_ZEROES"}
DEFAULT_PORT = 10809
# The spec's default maximum payload when the server states no block sizes.
DEFAULT_MAX_PAYLOAD = 32 << 20
# NBD errno values are wire constants, not the host's errno numbering.
NBD_ERRNO = {1: "EPERM", 5: "EIO", 12: "ENOMEM", 22: "EINVAL", 28: "ENOSPC"}
NBD_ERRNO |= {75: "EOVERFLOW", 95: "ENOTSUP", 108: "ESHUTDOWN"}
ESHUTDOWN = 108
REP_ERRORS = {1: "unsupported", 2: "policy", 3: "invalid", 4: "platform", 5: "TLS required"}
REP_ERRORS |= {6: "unknown export", 7: "shutting down", 8: "block size required", 9: "too big"}

REQUEST = struct.Struct(">IHHQQI")
REPLY = struct.Struct(">IIQ")
OPT = struct.Struct(">8sII")
OPT_REPLY = struct.Struct(">QIII")
READ_BUFFER = 256 << 10  # replies are parsed from here; READ payloads bypass it


@dataclass(frozen=True)
class ExportTraits:
    """What a server says of an export in the handshake: its size, its flags
    (read-only, flush, WRITE_ZEROES...) and its block sizes."""

    size: int
    flags: int
    min_block: int = 1
    preferred_block: int = 4096
    max_payload: int = DEFAULT_MAX_PAYLOAD

    @property
    def read_only(self) -> bool:
        return bool(self.flags & F_READ_ONLY)

    @property
    def can_flush(self) -> bool:
        return bool(self.flags & F_SEND_FLUSH)

    @property
    def can_write_zeroes(self) -> bool:
        return bool(self.flags & F_SEND_WRITE_ZEROES)


def parse_uri(uri: str) -> tuple[str, int, str]:
    """`nbd://HOST[:PORT]/EXPORT` -> (host, port, export);
    `nbd+unix:///EXPORT?socket=PATH` -> (PATH, 0, export): port 0 means a Unix socket."""
    usage = f"{uri!r} is not an NBD URI nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH"
    try:
        parts = urlsplit(uri)
        export = unquote(parts.path.removeprefix("/"))
        if parts.scheme == "nbd+unix":
            query = parse_qs(parts.query)
            sockets = query.get("socket", [])
            if parts.netloc or parts.fragment or set(query) != {"socket"} or len(sockets) != 1:
                raise NbdUriError(usage)
            return sockets[0], 0, export
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise NbdUriError(f"{usage}: {exc}") from None
    if parts.scheme != "nbd" or not parts.hostname or parts.query or parts.fragment:
        raise NbdUriError(usage)
    return parts.hostname, port, export


def quickack(sock: socket.socket) -> None:
    """Acknowledge at once. Linux delays ACKs in its default mode, and qemu-nbd holds
    small replies back until the ACK comes (Nagle): ~40 ms on every handshake step and
    on the last replies before a FLUSH. Linux leaves quick-ack mode by itself, so
    this is set again after each receive."""
    if hasattr(socket, "TCP_QUICKACK") and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


async def recv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))  # handshake only: small
        if not chunk:
            raise ConnectionResetError("the server closed the connection")
        data += chunk
        quickack(sock)
    return data


def tune(sock: socket.socket) -> None:
    # No Nagle: a FLUSH or a lone header must not wait for more data. Keepalive
    # and TCP_USER_TIMEOUT turn a peer that silently vanished (a tunnel, a VM)
    # into an error within ~30 s instead of a request that never completes.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 30_000)


async def open_socket(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    if port == 0:  # a Unix socket path, from parse_uri
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, host)
        except BaseException:
            sock.close()
            raise
        return sock
    last: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _, addr in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, addr)
            tune(sock)
            return sock
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            last = exc
    raise last


async def handshake(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, export: str, uri: str
) -> ExportTraits:
    magic, opt_magic, hflags = struct.unpack(">8s8sH", await recv_exact(loop, sock, 18))
    if magic != NBDMAGIC or opt_magic != IHAVEOPT:
        raise NbdConnectError(f"{uri}: the server does not speak newstyle NBD")
    if not hflags & FLAG_FIXED_NEWSTYLE:
        raise NbdConnectError(f"{uri}: the server does not speak fixed newstyle NBD")
    no_zeroes = hflags & FLAG_NO_ZEROES
    await loop.sock_sendall(sock, struct.pack(">I", FLAG_FIXED_NEWSTYLE | no_zeroes))
    name = export.encode()
    # Ask for block sizes: they tell us the largest payload the server takes.
    payload = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, INFO_BLOCK_SIZE)
    await loop.sock_sendall(sock, OPT.pack(IHAVEOPT, OPT_GO, len(payload)) + payload)
    size = flags = None
    blocks = (1, 4096, DEFAULT_MAX_PAYLOAD)
    while True:
        magic, _, rtype, length = OPT_REPLY.unpack(await recv_exact(loop, sock, 20))
        if magic != OPT_REPLY_MAGIC or length > 65536:
            raise NbdConnectError(f"{uri}: malformed option reply from the server")
        data = await recv_exact(loop, sock, length) if length else b""
        info = struct.unpack_from(">H", data)[0] if rtype == REP_INFO and length >= 2 else None
        if info == INFO_EXPORT and length == 12:
            size, flags = struct.unpack_from(">QH", data, 2)
        elif info == INFO_BLOCK_SIZE and length == 14:
            blocks = struct.unpack_from(">III", data, 2)
        elif rtype == REP_ACK:
            break
        elif rtype & (1 << 31):  # "unsupported" here means a server without NBD_OPT_GO
            why = REP_ERRORS.get(rtype & 0xFFFF, f"error {rtype & 0xFFFF}")
            text = data.decode(errors="replace")
            raise NbdConnectError(f"{uri}: the server refused export {export!r}: {why}: {text}")
    if size is None or flags is None:
        raise NbdConnectError(f"{uri}: the server sent no export size")
    return ExportTraits(size, flags, *blocks)
