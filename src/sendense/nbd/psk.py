"""NBD over TLS with a pre-shared key (TLS-PSK), as qemu-nbd, qemu-img and libnbd's
tools (nbdinfo, nbdcopy) speak it: a `keys.psk` file of `identity:hexkey` lines in
a directory both the server and the client name. The key never goes on a command
line: only the directory does.

Server: `qemu-nbd --object tls-creds-psk,id=tls0,endpoint=server,dir=DIR
--tls-creds tls0`. Clients: `nbds://IDENTITY@HOST:PORT/EXPORT?tls-psk-file=FILE`
(libnbd), `--object tls-creds-psk,id=tls0,endpoint=client,dir=DIR,username=IDENTITY
--image-opts driver=nbd,host=HOST,port=PORT,export=EXPORT,tls-creds=tls0` (qemu).
A client without the key is refused at NBD_OPT_GO; a wrong key fails the handshake.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from urllib.parse import quote

from sendense.common.files import private_dir

PSK_FILE = "keys.psk"
CREDS_ID = "tls0"
_IDENTITY = re.compile(r"[A-Za-z0-9._-]{1,128}")


def new_key() -> str:
    """256 random bits, hex: the form keys.psk holds."""
    return secrets.token_hex(32)


def check_identity(identity: str) -> str:
    """An identity fits a `keys.psk` line and a URI's user part unescaped."""
    if not _IDENTITY.fullmatch(identity):
        raise ValueError(f"PSK identity {identity!r}: use letters, digits, '.', '_', '-'")
    return identity


def write_psk(directory: Path, identity: str, key: str) -> Path:
    """`directory`/keys.psk holding one `identity:key` line; the directory 0700, the
    file 0600 from its creation (never readable by others, whatever the umask)."""
    private_dir(directory)
    path = directory / PSK_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(f"{check_identity(identity)}:{key}\n")
    return path


def _option(value: str) -> str:
    """A value inside a QEMU option string: commas doubled."""
    return value.replace(",", ",,")


def server_object(directory: Path) -> str:
    return f"tls-creds-psk,id={CREDS_ID},endpoint=server,dir={_option(str(directory))}"


def client_object(directory: Path, identity: str) -> str:
    return (
        f"tls-creds-psk,id={CREDS_ID},endpoint=client,dir={_option(str(directory))},"
        f"username={identity}"
    )


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def with_psk_file(uri: str, psk_file: Path) -> str:
    """An nbds:// URI that names the client's keys.psk (percent-encoded)."""
    return f"{uri}?tls-psk-file={quote(str(psk_file), safe='/')}"


def nbds_uri(identity: str, host: str, port: int, export: str, psk_file: Path | None = None) -> str:
    """The libnbd URI; without `psk_file` the client adds `?tls-psk-file=FILE`."""
    uri = f"nbds://{identity}@{_uri_host(host)}:{port}/{export}"
    return uri if psk_file is None else with_psk_file(uri, psk_file)


def image_opts(host: str, port: int, export: str) -> str:
    """qemu's `--image-opts` for the export, with the credentials `client_object` names."""
    return (
        f"driver=nbd,host={_option(host)},port={port},export={_option(export)},tls-creds={CREDS_ID}"
    )
