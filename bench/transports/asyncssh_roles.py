"""The asyncssh transport: its server (hub) and client (node) roles, each run in its
own process, and the checks that the server's restrictions hold."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from transports.loopback import HUB_IP, Banner, free_port, hostport, read_banner


async def role_asyncssh_server(args: argparse.Namespace) -> None:
    import asyncssh

    allowed_open = {hostport(x) for x in args.allow_open}
    allowed_listen = {hostport(x) for x in args.allow_listen}

    class Server(asyncssh.SSHServer):
        def connection_requested(
            self, dest_host: str, dest_port: int, _orig_host: str, _orig_port: int
        ) -> bool:
            if (dest_host, dest_port) in allowed_open:
                return True  # asyncssh opens dest_host:dest_port itself
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"{dest_host}:{dest_port} refused"
            )

        def server_requested(self, listen_host: str, listen_port: int) -> bool:
            return (listen_host, listen_port) in allowed_listen

        # session_requested: asyncssh's default refuses every session (no shell).

    await asyncssh.create_server(
        Server,
        HUB_IP,
        args.port,
        server_host_keys=[args.host_key],
        authorized_client_keys=args.authorized_keys,
        allow_pty=False,
        agent_forwarding=False,
        x11_forwarding=False,
        compression_algs=None,
        keepalive_interval=15,
        keepalive_count_max=3,
        window=args.window,
        max_pktsize=args.max_pktsize,
    )
    print("READY", flush=True)
    await asyncio.Event().wait()


async def role_asyncssh_client(args: argparse.Namespace) -> None:
    import asyncssh

    opts: dict[str, Any] = {}
    if args.cipher:
        opts["encryption_algs"] = [args.cipher]
    conn = await asyncssh.connect(
        HUB_IP,
        args.port,
        username="node",
        known_hosts=args.known_hosts,
        client_keys=[args.key],
        agent_path=None,
        config=[],
        compression_algs=None,
        keepalive_interval=10,
        keepalive_count_max=3,
        window=args.window,
        max_pktsize=args.max_pktsize,
        **opts,
    )
    for spec in args.local:
        lh, lp, dh, dp = spec.split(":")
        await conn.forward_local_port(lh, int(lp), dh, int(dp))
    cipher = conn.get_extra_info("send_cipher")
    comp = conn.get_extra_info("send_compression")
    print(f"READY cipher={cipher} compression={comp}", flush=True)
    await conn.wait_closed()
    sys.exit(1)


async def check_asyncssh(
    work: Path, port: int, nbd_port: int, listen_port: int, pg: Banner, node_api: Banner
) -> dict[str, Any]:
    import asyncssh

    def connect(key: str = "node_key", known: str = "known_hosts_asyncssh") -> Any:
        return asyncssh.connect(
            HUB_IP,
            port,
            username="node",
            known_hosts=str(work / known),
            client_keys=[str(work / key)],
            agent_path=None,
            config=[],
        )

    r: dict[str, Any] = {}
    try:
        async with connect(key="other_key"):
            r["unknown_client_key_refused"] = False
    except asyncssh.PermissionDenied:
        r["unknown_client_key_refused"] = True
    try:
        async with connect(known="wrong_known_hosts_asyncssh"):
            r["wrong_host_key_refused"] = False
    except asyncssh.HostKeyNotVerifiable:
        r["wrong_host_key_refused"] = True
    async with connect() as conn:
        try:
            await conn.run("id", check=True)
            r["shell_refused"] = False
        except asyncssh.ChannelOpenError:
            r["shell_refused"] = True
        reader, writer = await conn.open_connection(HUB_IP, nbd_port)
        r["local_forward_to_nbd_ok"] = (await reader.readexactly(8)) == b"NBDMAGIC"
        writer.close()
        for name, host, p in (
            ("forward_to_unpermitted_port_refused", HUB_IP, pg.port),
            ("forward_to_localhost_name_refused", "localhost", nbd_port),
        ):
            try:
                await conn.open_connection(host, p)
                r[name] = False
            except asyncssh.ChannelOpenError:
                r[name] = True
        r["forward_to_unpermitted_port_refused"] &= pg.accepted == 0
        await conn.forward_remote_port(HUB_IP, listen_port, HUB_IP, node_api.port)
        got = await asyncio.to_thread(read_banner, HUB_IP, listen_port)
        r["reverse_forward_ok"] = got == b"hello from node-api"
        try:
            await conn.forward_remote_port(HUB_IP, free_port(), HUB_IP, node_api.port)
            r["reverse_to_unpermitted_port_refused"] = False
        except asyncssh.ChannelListenError:
            r["reverse_to_unpermitted_port_refused"] = True
    return r
