"""`sendense restore ...`: export a disk, instant NBD access, whole VMs (restore_vm.py).

An export is a download through the hub's API into a file where the command runs,
written by the operator's own user: the hub never writes to a path an API caller
names.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from sendense.cli.client import HubClient, read_token
from sendense.cli.hub import HubUrlOpt, TokenFileOpt
from sendense.cli.output import console, human_bytes, one_line_errors, table
from sendense.common.errors import Conflict, InvalidInput, SendenseError
from sendense.nbd.psk import PSK_FILE, client_object, with_psk_file, write_psk
from sendense.nbd.qemu_img import tls_info_command

app = typer.Typer(
    help="Restore: export disks, instant NBD access, whole VMs.", no_args_is_help=True
)
FORMATS = ("raw", "qcow2", "vmdk")
CHUNK = 1 << 20
_ZERO = bytes(CHUNK)


def _client(hub_url: str | None, token_file: Path | None) -> HubClient:
    return HubClient(hub_url, read_token(token_file))


def export_target(output: Path, force: bool, repositories: list[dict[str, Any]]) -> Path:
    target = output.expanduser().absolute()
    if not target.parent.is_dir():
        raise InvalidInput(f"directory {target.parent} does not exist")
    if target.is_dir():
        raise InvalidInput(f"{target} is a directory")
    resolved = target.parent.resolve() / target.name
    for repo in repositories:
        if resolved.is_relative_to(Path(repo["path"]).resolve()):
            raise InvalidInput(f"{target} lies inside repository {repo['name']}: export elsewhere")
    if (target.exists() or target.is_symlink()) and not force:
        raise Conflict(f"{target} exists: --force replaces it")
    return target


@app.command("export")
@one_line_errors
def export(
    point: Annotated[str, typer.Argument(help="Restore point id")],
    disk: Annotated[int, typer.Option("--disk", help="Disk key, e.g. 2000")],
    output: Annotated[Path, typer.Option("--output", help="File to write")],
    fmt: Annotated[str, typer.Option("--format", help="raw, qcow2 or vmdk")] = "raw",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file")] = False,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Download one disk of a restore point as a raw, QCOW2 or VMDK (streamOptimized,
    importable by vSphere) file."""
    if fmt not in FORMATS:
        raise InvalidInput(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    client = _client(hub_url, token_file)
    target = export_target(output, force, client.get("/api/v1/repositories"))
    waiting = "the hub prepares the file" if fmt != "raw" else "downloading"
    path = f"/api/v1/restore-points/{point}/disks/{disk}/download"
    size = download_into(client, target, path, {"format": fmt}, waiting)
    console.print(
        f"disk {disk} of restore point {point}: {human_bytes(size)} {fmt} written to {target}"
    )


def download_into(
    client: HubClient, target: Path, path: str, params: dict[str, str], waiting: str
) -> int:
    """The body of GET `path` written to `target` through a temporary file in its
    folder, renamed once complete (a failed download leaves nothing); its size.
    `waiting`: what the bar says until the first byte comes."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    partial = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            size = _download(client, path, params, out, waiting)
            os.fsync(out.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return size


def _download(client: HubClient, path: str, params: dict[str, str], out: Any, waiting: str) -> int:
    """Stream the body into `out`, leaving holes where it is all zeroes (a raw disk
    is mostly holes); returns its size."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bars:
        task = bars.add_task(waiting)
        # QCOW2 and VMDK are converted on the hub before the first byte comes.
        timeout = httpx.Timeout(30.0, read=None)
        with client.stream("GET", path, params=params, timeout=timeout) as response:
            total = int(response.headers.get("content-length", 0)) or None
            bars.update(task, description="downloading", total=total)
            written = 0
            for chunk in response.iter_bytes(CHUNK):
                if chunk == _ZERO[: len(chunk)]:
                    out.seek(len(chunk), os.SEEK_CUR)
                else:
                    out.write(chunk)
                written += len(chunk)
                bars.update(task, completed=written)
    if total is not None and written != total:
        raise SendenseError(f"the download ended after {written} of {total} bytes")
    out.truncate(written)
    return written


def default_key_dir(access_id: str) -> Path:
    return Path.home() / ".local" / "share" / "sendense" / "access" / access_id


@app.command("instant")
@one_line_errors
def instant(
    point: Annotated[str, typer.Argument(help="Restore point id")],
    key_dir: Annotated[
        Path | None,
        typer.Option(
            "--key-dir",
            help="Directory for the access's keys.psk (made 0700; default "
            "~/.local/share/sendense/access/ACCESS)",
        ),
    ] = None,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Serve a restore point's disks over NBD with TLS and a pre-shared key. Writes go
    to a throwaway overlay, never into the backup; the access closes after the hub's
    idle time without a client. The key is shown once, and saved in keys.psk."""
    if key_dir is not None and key_dir.expanduser().exists() and not key_dir.expanduser().is_dir():
        raise InvalidInput(f"--key-dir {key_dir} is not a directory")
    access = _client(hub_url, token_file).post(f"/api/v1/restore-points/{point}/access", {})
    access_id, identity = access["id"], access["psk_identity"]
    directory = (key_dir or default_key_dir(access_id)).expanduser().absolute()
    psk_file = directory / PSK_FILE
    typer.echo(f"access {access_id} open; close it with: sendense restore close {access_id}")
    typer.echo(f"TLS pre-shared key (shown once), saved in {psk_file}:")
    typer.echo(f"  identity {identity}")
    typer.echo(f"  key      {access['psk']}")
    try:
        write_psk(directory, identity, access["psk"])
    except OSError as exc:
        raise SendenseError(
            f"could not save the key in {psk_file} ({exc.strerror}): write the line "
            f"'{identity}:KEY' there yourself, or close the access"
        ) from None
    typer.echo("disks (nbdinfo, nbdcopy, libnbd):")
    for disk in access["disks"]:
        typer.echo(f"{disk['disk_key']} {with_psk_file(disk['uri'], psk_file)}")
    typer.echo("qemu-img, qemu-io, qemu-system (one disk each):")
    qemu_object = client_object(directory, identity)
    for disk in access["disks"]:
        command = tls_info_command(qemu_object, disk["image_opts"])
        typer.echo(f"{disk['disk_key']} {shlex.join(command)}")


@app.command("access-list")
@one_line_errors
def access_list(hub_url: HubUrlOpt = None, token_file: TokenFileOpt = None) -> None:
    """Open accesses and their NBD URIs (keys are shown only when opened)."""
    rows = _client(hub_url, token_file).get("/api/v1/access")
    table(
        "Instant access",
        ["id", "restore point", "started", "disks"],
        [
            (
                a["id"],
                a["restore_point_id"],
                (a["started_at"] or "")[:19],
                "\n".join(f"{d['disk_key']} {d['uri']}" for d in a["disks"]),
            )
            for a in rows
        ],
    )


@app.command("close")
@one_line_errors
def close(
    access_id: Annotated[str, typer.Argument(help="Access id (see access-list)")],
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Close an instant access: its servers stop, its overlays and its key are dropped
    (the key's default directory here too)."""
    _client(hub_url, token_file).request("DELETE", f"/api/v1/access/{access_id}")
    shutil.rmtree(default_key_dir(access_id), ignore_errors=True)
    typer.echo(f"access {access_id} closed")
