"""`sendense restore files POINT ...`: file-level restore. Each command opens the
restore point on the hub (or joins the session open on it: the first command
waits 10 to 30 s for the appliance, the next ones do not), then lists, finds or
downloads. A download is written where the command runs, by the operator's
user, into a temporary file renamed once complete."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from sendense.cli.client import HubClient, read_token
from sendense.cli.hub import HubUrlOpt, TokenFileOpt
from sendense.cli.output import console, human_bytes, one_line_errors, table
from sendense.cli.restore import download_into, export_target
from sendense.common.errors import InvalidInput

app = typer.Typer(
    help="Browse a restore point's filesystems and take files out: "
    "sendense restore files POINT ls /etc",
    no_args_is_help=True,
)
FsOpt = Annotated[
    str | None, typer.Option("--fs", help="The filesystem, when there are several (see `fs`)")
]
CHUNK = 1 << 20
OPEN_TIMEOUT = httpx.Timeout(30.0, read=None)  # the appliance's launch


@app.callback()
def files(
    ctx: typer.Context, point: Annotated[str, typer.Argument(help="Restore point id")]
) -> None:
    ctx.obj = point


def _open(
    ctx: typer.Context, hub_url: str | None, token_file: Path | None
) -> tuple[HubClient, str]:
    """The client and the session's base path, the point opened (or joined)."""
    point = str(ctx.obj)
    client = HubClient(hub_url, read_token(token_file))
    base = f"/api/v1/restore-points/{point}/browse"
    with console.status(f"opening restore point {point} (an appliance starts: 10 to 30 s)"):
        client.request("POST", base, timeout=OPEN_TIMEOUT)
    return client, base


@app.command("fs")
@one_line_errors
def filesystems(
    ctx: typer.Context, hub_url: HubUrlOpt = None, token_file: TokenFileOpt = None
) -> None:
    """The point's filesystems: on partitions, logical volumes or whole disks."""
    client, base = _open(ctx, hub_url, token_file)
    found = client.get(f"{base}/filesystems")
    table(
        f"filesystems of restore point {ctx.obj}",
        ["fs", "type", "label", "size", "used", "disk", "state"],
        [
            (
                f["id"],
                f["type"],
                f["label"] or None,
                human_bytes(f["size"]),
                human_bytes(f["used"]),
                f["disk_key"],
                "readable" if f["readable"] else f["error"],
            )
            for f in found
        ],
    )


@app.command("ls")
@one_line_errors
def ls(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="A folder, from the filesystem's root")] = "/",
    fs: FsOpt = None,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000)] = 1000,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """A folder's entries, by name (a page of `--limit` from `--offset`)."""
    client, base = _open(ctx, hub_url, token_file)
    params: dict[str, Any] = {"path": path, "offset": offset, "limit": limit}
    if fs:
        params["fs"] = fs
    listing = client.request("GET", f"{base}/ls", params=params)
    rows = [
        (
            e["type"],
            e["mode"],
            f"{e['uid']}:{e['gid']}",
            e["size"] if e["type"] == "file" else None,
            e["mtime"][:19].replace("T", " "),
            e["name"] + (f" -> {e['target']}" if e["target"] else ""),
        )
        for e in listing["entries"]
    ]
    table(
        f"{listing['fs']}:{listing['path']}",
        ["type", "mode", "owner", "size", "modified", "name"],
        rows,
    )
    shown = listing["offset"] + len(rows)
    if shown < listing["total"]:
        console.print(f"{len(rows)} of {listing['total']} entries: --offset {shown} for the next")


@app.command("find")
@one_line_errors
def find(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A name pattern: *.conf, report-??.pdf")],
    under: Annotated[str, typer.Option("--under", help="The folder to search")] = "/",
    fs: FsOpt = None,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Paths whose name matches the pattern, under a folder."""
    client, base = _open(ctx, hub_url, token_file)
    params = {"name": name, "path": under} | ({"fs": fs} if fs else {})
    found = client.request("GET", f"{base}/find", params=params)
    for path in found["paths"]:
        console.print(path, markup=False, highlight=False)
    if found["truncated"]:
        console.print(f"the first {len(found['paths'])} matches: narrow the pattern or --under")


@app.command("get")
@one_line_errors
def get(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="A file, or a folder (as tar or zip)")],
    output: Annotated[Path, typer.Option("--output", help="File to write")],
    fs: FsOpt = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help="A folder's archive: tar or zip (default: by --output's suffix)"
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file")] = False,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Download a file, or a folder as a tar or zip with its modes and times."""
    archive = fmt or ("zip" if output.suffix.lower() == ".zip" else "tar")
    if archive not in ("tar", "zip"):
        raise InvalidInput(f"format {archive!r}: use tar or zip")
    client, base = _open(ctx, hub_url, token_file)
    target = export_target(output, force, client.get("/api/v1/repositories"))
    params = {"path": path, "format": archive} | ({"fs": fs} if fs else {})
    written = download_into(client, target, f"{base}/download", params, "downloading")
    console.print(f"{path}: {human_bytes(written)} written to {target}", markup=False)


@app.command("close")
@one_line_errors
def close(ctx: typer.Context, hub_url: HubUrlOpt = None, token_file: TokenFileOpt = None) -> None:
    """Close the point's session now (it closes by itself when idle)."""
    client = HubClient(hub_url, read_token(token_file))
    client.request("DELETE", f"/api/v1/restore-points/{ctx.obj}/browse")
    console.print(f"restore point {ctx.obj}: browsing closed")
