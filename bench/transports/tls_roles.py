"""The TLS proxy transport: an asyncio TLS 1.3 forwarder pair with mutual
certificates, its server (hub) and client (node) roles each run in its own process."""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys

from transports.loopback import HUB_IP, hostport


def _tls_context(args: argparse.Namespace, server: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(args.cert, args.key)
    ctx.load_verify_locations(args.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual: the server demands the node's cert
    return ctx


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 20):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _splice(
    r1: asyncio.StreamReader,
    w1: asyncio.StreamWriter,
    r2: asyncio.StreamReader,
    w2: asyncio.StreamWriter,
) -> None:
    await asyncio.gather(_pump(r1, w2), _pump(r2, w1))


async def role_tls_server(args: argparse.Namespace) -> None:
    """Hub side: TLS in, plain TCP out to the one permitted target."""
    ctx = _tls_context(args, server=True)
    dest_host, dest_port = hostport(args.dest)

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            r2, w2 = await asyncio.open_connection(dest_host, dest_port, limit=1 << 21)
        except OSError:
            w.close()
            return
        await _splice(r, w, r2, w2)

    server = await asyncio.start_server(handle, HUB_IP, args.port, ssl=ctx, limit=1 << 21)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


async def role_tls_client(args: argparse.Namespace) -> None:
    """Node side: plain listener on 127.0.0.2, one TLS connection per inbound one."""
    ctx = _tls_context(args, server=False)
    lh, lp = hostport(args.listen)
    seen: list[str] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            r2, w2 = await asyncio.open_connection(
                HUB_IP, args.port, ssl=ctx, server_hostname=HUB_IP, limit=1 << 21
            )
        except (OSError, ssl.SSLError):
            w.close()
            return
        if not seen:
            sslobj = w2.get_extra_info("ssl_object")
            seen.append(f"{sslobj.version()} {sslobj.cipher()[0]}")
            print(f"CIPHER {seen[0]}", file=sys.stderr, flush=True)
        await _splice(r, w, r2, w2)

    server = await asyncio.start_server(handle, lh, lp, limit=1 << 21)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()
