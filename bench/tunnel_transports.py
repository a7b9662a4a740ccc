"""Benchmark node->hub tunnel transports for NBD writes: direct, OpenSSH, asyncssh, TLS.

    .venv/bin/python bench/tunnel_transports.py [--runs 3] [--data-gib 2] [--only a,b] [--out F]

What it does, all on loopback:
  * source: a sparse raw file of 2 x --data-gib GiB, alternating 16 MiB extents of
    random data and holes (so --data-gib GiB of data plus as much of holes);
  * target: a fresh QCOW2 of that size per run, served by the project's QemuNbd
    (`qemu-nbd --shared=10 --persistent --cache=none -f qcow2 -b 127.0.0.1`);
  * writer: `nbdcopy --request-size=4194304 -R 8 --queue-size=67108864 --flush`
    (nbdcopy's default -C 4 uses 4 connections because qemu-nbd advertises
    multi-conn; the "-C1" variants force one);
  * transports: direct; OpenSSH (a private sshd with its own config, host key
    and authorized_keys, `ssh -N -L 127.0.0.2:P2:127.0.0.1:P`) with several
    ciphers; asyncssh (server and client each in its own Python process,
    `forward_local_port`); an asyncio TLS 1.3 forwarder pair with mutual
    certificates; qemu-nbd's own TLS (`--tls-creds`, nbdcopy to `nbds://`).

Per variant: median MB/s of data (MB = 10^6 B) over --runs, the ratio to direct,
and CPU seconds per GiB of data used by the tunnel processes (utime+stime+
cutime+cstime over each tunnel process tree from /proc, before vs after), plus
nbdcopy's and qemu-nbd's CPU. Runs are interleaved across variants so drift hits
all alike. Before measuring, it checks the restrictions of both SSH servers
(shell refused, unpermitted forwards refused, reverse forward, host-key pinning).

Every process it starts (sshd, ssh, asyncssh and TLS roles, qemu-nbd) is stopped
in a finally block, descendants included, also on SIGTERM/SIGHUP/^C.
The roles that run in child processes (`asyncssh-server`, `asyncssh-client`,
`tls-server`, `tls-client`) start through this script too. The transports, the
runs and the helpers are in bench/transports/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transports.asyncssh_roles import check_asyncssh, role_asyncssh_client, role_asyncssh_server
from transports.credentials import make_certs, make_ssh_keys
from transports.loopback import HUB_API_PORT, HUB_IP, Banner, free_port
from transports.openssh import SshEnv, check_openssh
from transports.processes import PROCS, wait_quiet
from transports.report import print_table, summarize, version
from transports.runs import EXTENT, NBDCOPY, Bench, make_source, one_run, start_servers, variants
from transports.tls_roles import role_tls_client, role_tls_server


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def bench_main(args: argparse.Namespace) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)
    try:
        import asyncssh  # noqa: F401

        asyncssh_ok = True
    except ImportError:
        asyncssh_ok = False
        print("asyncssh is not installed: its variants are skipped", file=sys.stderr)
    size = int(args.data_gib * 2 * (1 << 30)) // (2 * EXTENT) * (2 * EXTENT)
    # StrictModes checks every directory up to / : a temp dir under /tmp (1777)
    # fails it, so keys and configs live under a root-owned 0755 parent (/run);
    # the images go to --dir (default: the temp dir), on a disk that takes O_DIRECT.
    work = Path(tempfile.mkdtemp(prefix="sendense-tunnel-keys-", dir="/run"))
    data = Path(tempfile.mkdtemp(prefix="sendense-tunnel-bench-", dir=args.dir))
    pg, node_api = Banner("postgres"), Banner("node-api")
    checks: dict[str, Any] = {}
    try:
        make_ssh_keys(work)
        nbd_port = free_port()
        ssh = SshEnv(work, free_port(), nbd_port, free_port())
        ssh.write()
        host = (work / "host_key.pub").read_text().split()[:2]
        other = (work / "other_key.pub").read_text().split()[:2]
        node_pub = (work / "node_key.pub").read_text().split()[:2]
        b = Bench(
            work,
            data,
            nbd_port,
            ssh,
            free_port(),
            free_port(),
            free_port(),
            *make_certs(work),
            asyncssh_ok,
        )
        (work / "known_hosts_asyncssh").write_text(
            "".join(
                f"[{HUB_IP}]:{p} {' '.join(host)}\n"
                for p in (b.asyncssh_port, b.asyncssh_tuned_port)
            )
        )
        (work / "wrong_known_hosts_asyncssh").write_text(
            f"[{HUB_IP}]:{b.asyncssh_port} {' '.join(other)}\n"
        )
        # asyncssh ignores `restrict` (and so `port-forwarding`): it honours the
        # `no-*` flags and `permitopen`; its server callbacks enforce the rest.
        opens = ",".join(f'permitopen="{HUB_IP}:{p}"' for p in (nbd_port, HUB_API_PORT))
        (work / "authorized_keys_asyncssh").write_text(
            f"no-pty,no-agent-forwarding,no-X11-forwarding,{opens} {' '.join(node_pub)} node-1\n"
        )
        start_servers(b)

        from sendense.nbd.qemu_img import QemuImg
        from sendense.nbd.qemu_nbd import ExportSpec, QemuNbd

        check_img = data / "check.qcow2"
        QemuImg().create(check_img, 1 << 30)
        with QemuNbd(ExportSpec(check_img, nbd_port, "disk"), log_path=work / "qemu-nbd.log"):
            checks["openssh"] = check_openssh(ssh, pg, node_api)
            if asyncssh_ok:
                checks["asyncssh"] = asyncio.run(
                    check_asyncssh(work, b.asyncssh_port, nbd_port, ssh.listen_port, pg, node_api)
                )
        check_img.unlink()
        print(json.dumps(checks, indent=1), file=sys.stderr)

        source = data / "source.raw"
        data_bytes = make_source(source, size)
        only = set(args.only.split(",")) if args.only else None
        vs = variants(asyncssh_ok, only)
        disturbed: list[str] = []
        for run in range(args.runs):
            for v in vs:
                if v.note.startswith("failed"):
                    continue
                try:
                    for attempt in range(3):
                        waited = wait_quiet(args.quiet)
                        res = one_run(b, v, source, size, verify=run == 0 and attempt == 0)
                        # Busy time beyond ours (and the usual softirq) means another
                        # session ran meanwhile: this run says nothing, run it again.
                        if res["other_cpu"] <= 0.4 * res["seconds"]:
                            break
                        disturbed.append(f"{v.name} run {run + 1}: other {res['other_cpu']:.1f} s")
                        print(f"{v.name}: disturbed ({res['other_cpu']:.1f} s)", file=sys.stderr)
                except Exception as exc:  # one broken transport must not sink the rest
                    v.note = f"failed: {exc}"
                    print(f"{v.name}: {v.note}", file=sys.stderr)
                    continue
                for k, val in res.items():
                    v.data.setdefault(k, []).append(val)
                print(
                    f"run {run + 1} {v.name:24} {res['seconds']:6.2f} s "
                    f"{data_bytes / res['seconds'] / 1e6:6.0f} MB/s tunnel cpu "
                    f"{res['tunnel_cpu']:5.2f} s (node {res['tunnel_node_cpu']:5.2f} s, hub "
                    f"{res['tunnel_hub_cpu']:5.2f} s) qemu-nbd {res['qemu_nbd_cpu']:5.2f} s "
                    f"nbdcopy {res['nbdcopy_cpu']:5.2f} s other {res['other_cpu']:5.2f} s "
                    f"(waited {waited:.0f} s for quiet) [{res['cipher']}]",
                    file=sys.stderr,
                )
        table = summarize(vs, data_bytes)
    finally:
        PROCS.stop_all()
        pg.close()
        node_api.close()
        shutil.rmtree(data, ignore_errors=True)
        if args.keep:
            print(f"kept {work} (keys, configs, logs)", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report = {
        "data_bytes": data_bytes,
        "holes_bytes": size - data_bytes,
        "runs": args.runs,
        "nbdcopy_argv": NBDCOPY,
        "checks": checks,
        "variants": table,
        "disturbed_runs_repeated": disturbed,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "openssh": version(["ssh", "-V"]),
            "openssl": ssl.OPENSSL_VERSION,
            "asyncssh": _asyncssh_version(),
            "qemu_nbd": version(["qemu-nbd", "--version"]),
            "nbdcopy": version(["nbdcopy", "--version"]),
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print_table(table)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _asyncssh_version() -> str:
    try:
        import asyncssh

        return str(asyncssh.__version__)
    except ImportError:
        return "not installed"


ROLES: dict[str, Callable[[argparse.Namespace], Any]] = {
    "asyncssh-server": role_asyncssh_server,
    "asyncssh-client": role_asyncssh_client,
    "tls-server": role_tls_server,
    "tls-client": role_tls_client,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ROLES:
        p = argparse.ArgumentParser(prog=argv[0])
        p.add_argument("--port", type=int, required=True)
        for opt in (
            "--host-key",
            "--authorized-keys",
            "--known-hosts",
            "--key",
            "--cert",
            "--ca",
            "--dest",
            "--listen",
            "--cipher",
        ):
            p.add_argument(opt)
        p.add_argument("--allow-open", nargs="*", default=[])
        p.add_argument("--allow-listen", nargs="*", default=[])
        p.add_argument("--local", action="append", default=[])
        p.add_argument("--window", type=int, default=2 << 20)  # asyncssh's defaults
        p.add_argument("--max-pktsize", type=int, default=32768)
        ns = p.parse_args(argv[1:])
        signal.signal(signal.SIGTERM, _raise_exit)
        with contextlib.suppress(KeyboardInterrupt, SystemExit):
            asyncio.run(ROLES[argv[0]](ns))
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-gib", type=float, default=2.0, help="GiB of data (and of holes)")
    parser.add_argument("--only", help="comma-separated variant names (direct always runs)")
    parser.add_argument("--dir", type=Path, help="parent of the image scratch dir")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.2,
        help="before each run, wait until the machine's busy cores are below this",
    )
    parser.add_argument("--keep", action="store_true", help="keep keys, configs and logs")
    return bench_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
