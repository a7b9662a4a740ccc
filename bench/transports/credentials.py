"""The SSH keys (hub host key, the node's key, an intruder's) and the TLS CA, server
and client certificates the transports use, made fresh in the work directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def make_ssh_keys(work: Path) -> None:
    for name, comment in (("host_key", "hub"), ("node_key", "node-1"), ("other_key", "intruder")):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(work / name)],
            check=True,
        )


OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = sendense-bench
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
[client]
basicConstraints = critical,CA:FALSE
extendedKeyUsage = clientAuth
"""


def make_certs(work: Path) -> tuple[Path, Path]:
    """A CA, a server and a client certificate (EC P-256), laid out as qemu's
    tls-creds-x509 (server dir) and libnbd's tls-certificates (client dir) expect."""
    cnf, sdir, cdir = work / "openssl.cnf", work / "tls-server", work / "tls-client"
    cnf.write_text(OPENSSL_CNF)
    sdir.mkdir(mode=0o700)
    cdir.mkdir(mode=0o700)

    def ssl_run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    def key(path: Path) -> None:
        ssl_run(
            "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)
        )

    ca_key, ca = work / "ca-key.pem", sdir / "ca-cert.pem"
    key(ca_key)
    ssl_run(
        "req",
        "-x509",
        "-new",
        "-key",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "2",
        "-config",
        str(cnf),
        "-extensions",
        "ca",
        "-subj",
        "/CN=sendense-bench-ca",
    )
    shutil.copy(ca, cdir / "ca-cert.pem")
    for d, role, cn in ((sdir, "server", "hub"), (cdir, "client", "node-1")):
        k, csr = d / f"{role}-key.pem", work / f"{role}.csr"
        key(k)
        ssl_run(
            "req",
            "-new",
            "-key",
            str(k),
            "-out",
            str(csr),
            "-config",
            str(cnf),
            "-subj",
            f"/CN={cn}",
        )
        ssl_run(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca),
            "-CAkey",
            str(ca_key),
            "-set_serial",
            str(int.from_bytes(os.urandom(8), "big")),
            "-days",
            "2",
            "-extfile",
            str(cnf),
            "-extensions",
            role,
            "-out",
            str(d / f"{role}-cert.pem"),
        )
    return sdir, cdir
