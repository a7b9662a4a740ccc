"""`sendense copy ...`: offsite copy targets (S3), copying points to them, the
points they hold, a lost hub rebuilt from a bucket, fetching and verifying."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from sendense.cli.client import HubClient, read_token
from sendense.cli.hub import HubUrlOpt, TokenFileOpt
from sendense.cli.output import console, one_line_errors, table
from sendense.cli.watch import watch_job
from sendense.common.errors import InvalidInput, SendenseError

app = typer.Typer(help="Offsite copies to S3 object storage.", no_args_is_help=True)
target_app = typer.Typer(help="Copy targets (S3 buckets).", no_args_is_help=True)
app.add_typer(target_app, name="target")

SECRET_ENV = "SENDENSE_COPY_SECRET_KEY"  # noqa: S105 (a variable's name, not a secret)
KeyFileOpt = Annotated[
    Path | None,
    typer.Option(help="A file with the recovery key of a bucket that holds copies already"),
]


def _client(hub_url: str | None, token_file: Path | None) -> HubClient:
    return HubClient(hub_url, read_token(token_file))


def _secret(path: Path | None) -> str:
    secret = path.read_text().strip() if path else os.environ.get(SECRET_ENV, "")
    if not secret:
        raise InvalidInput(f"no S3 secret key: --secret-key-file or {SECRET_ENV}")
    return secret


def _name(value: str) -> str:
    return quote(value, safe="")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")


@target_app.command("add")
@one_line_errors
def target_add(
    name: Annotated[str, typer.Argument(help="A name for the target")],
    endpoint: Annotated[str, typer.Option(help="https://s3.example.com (or http:// on a LAN)")],
    bucket: Annotated[str, typer.Option(help="The bucket (with object lock, to lock)")],
    access_key: Annotated[str, typer.Option(help="The S3 access key id")],
    secret_key_file: Annotated[
        Path | None, typer.Option(help=f"File with the S3 secret key (else {SECRET_ENV})")
    ] = None,
    prefix: Annotated[str, typer.Option(help="Objects go under this prefix")] = "",
    region: Annotated[str, typer.Option()] = "us-east-1",
    virtual_host: Annotated[
        bool, typer.Option(help="Virtual-host addressing (AWS) instead of path style")
    ] = False,
    ca_file: Annotated[str | None, typer.Option(help="A CA file on the hub for TLS")] = None,
    lock: Annotated[str, typer.Option(help="none, governance or compliance")] = "none",
    lock_days: Annotated[int, typer.Option(help="Days each object stays locked")] = 0,
    limit: Annotated[float | None, typer.Option(help="Bandwidth limit, MB/s")] = None,
    full_every: Annotated[int, typer.Option(help="A synthetic full every N points")] = 7,
    key_file: KeyFileOpt = None,
    key_out: Annotated[
        Path | None, typer.Option(help="Also write a new key's recovery text to this file (0600)")
    ] = None,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Add a copy target. A new key's recovery text is shown once: print it, keep it
    away from the hub. Without it, the copies cannot be read."""
    body: dict[str, Any] = {
        "name": name,
        "endpoint": endpoint,
        "bucket": bucket,
        "prefix": prefix,
        "region": region,
        "addressing": "virtual" if virtual_host else "path",
        "ca_file": ca_file,
        "access_key": access_key,
        "secret_key": _secret(secret_key_file),
        "lock": lock,
        "lock_days": lock_days,
        "limit_mb_s": limit,
        "full_every": full_every,
    }
    if key_file is not None:
        body["recovery_key"] = key_file.read_text().strip()
    made = _client(hub_url, token_file).post("/api/v1/copy-targets", body)
    target = made["target"]
    console.print(f"copy target {target['name']} added (key {target['key_fingerprint']})")
    if made.get("recovery_key"):
        if key_out is not None:
            _write_private(key_out, made["recovery_key"])
        console.print("The target's key, shown this once. Print it and keep it safe:")
        console.print(made["recovery_key"], markup=False, highlight=False)


@target_app.command("list")
@one_line_errors
def target_list(hub_url: HubUrlOpt = None, token_file: TokenFileOpt = None) -> None:
    """The copy targets."""
    targets = _client(hub_url, token_file).get("/api/v1/copy-targets")
    table(
        "Copy targets",
        ["name", "endpoint", "bucket", "prefix", "lock", "days", "limit MB/s", "key"],
        [
            (
                t["name"],
                t["endpoint"],
                t["bucket"],
                t["prefix"],
                t["lock_mode"],
                t["lock_days"],
                t["limit_mb_s"] or "-",
                t["key_fingerprint"],
            )
            for t in targets
        ],
    )


@app.command("key")
@one_line_errors
def key_export(
    name: Annotated[str, typer.Argument(help="The copy target")],
    output: Annotated[Path, typer.Option(help="Write the recovery text here (0600)")],
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Export a target's key as recovery text (admins; in the audit log)."""
    answer = _client(hub_url, token_file).post(f"/api/v1/copy-targets/{_name(name)}/key", {})
    _write_private(output, answer["recovery_key"])
    console.print(f"the key of copy target {name} is in {output}")


def _run(client: HubClient, path: str, body: dict[str, Any]) -> None:
    queued = client.post(path, body)
    ended = watch_job(client, queued["job_id"], lambda _disk: "copy")
    if ended.get("state") != "complete":
        raise SendenseError(f"task {queued['job_id']} {ended.get('state')}: {ended.get('error')}")
    console.print(ended.get("error") or f"task {queued['job_id']} complete")


@app.command("point")
@one_line_errors
def copy_point(
    name: Annotated[str, typer.Argument(help="The copy target")],
    point: Annotated[str, typer.Argument(help="A verified restore point's id")],
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Copy a restore point to a target (only what the target lacks is sent)."""
    client = _client(hub_url, token_file)
    _run(client, f"/api/v1/copy-targets/{_name(name)}/copies", {"point_id": point})


@app.command("points")
@one_line_errors
def copy_points(
    name: Annotated[str, typer.Argument(help="The copy target")],
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """The restore points a target holds."""
    rows = _client(hub_url, token_file).get(f"/api/v1/copy-targets/{_name(name)}/points")
    table(
        f"Copied to {name}",
        ["point", "vm", "created", "copied", "status", "problem"],
        [
            (
                p["restore_point_id"],
                p["vm_name"],
                p["point_created_at"][:19],
                p["copied_at"][:19],
                p["status"],
                p["verify_error"] or "",
            )
            for p in rows
        ],
    )


@app.command("import")
@one_line_errors
def copy_import(
    name: Annotated[str, typer.Argument(help="The copy target (added with --key-file)")],
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Read every manifest of a target's bucket into this hub's catalogue (a new hub
    rebuilt from its copies); then `sendense copy fetch` brings points back."""
    answer = _client(hub_url, token_file).post(f"/api/v1/copy-targets/{_name(name)}/import", {})
    config = answer["configuration"]
    console.print(
        f"{answer['added']} restore points imported from {name}; from its configuration: "
        f"{config['policies']} policies, {config['vcenters']} vCenters, {config['users']} users"
    )


@app.command("policy")
@one_line_errors
def copy_policy(
    name: Annotated[str, typer.Argument(help="The copy target")],
    vms: Annotated[
        str | None,
        typer.Option(help="VMs (a name pattern) whose new verified points go by themselves"),
    ] = None,
    keep_last: Annotated[int, typer.Option()] = 0,
    keep_daily: Annotated[int, typer.Option()] = 0,
    keep_weekly: Annotated[int, typer.Option()] = 0,
    keep_monthly: Annotated[int, typer.Option()] = 0,
    keep_yearly: Annotated[int, typer.Option()] = 0,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Set which VMs a target copies by itself and its own keep-* rules (none: keep all)."""
    body = {
        "vm_pattern": vms,
        "keep_last": keep_last,
        "keep_daily": keep_daily,
        "keep_weekly": keep_weekly,
        "keep_monthly": keep_monthly,
        "keep_yearly": keep_yearly,
    }
    target = _client(hub_url, token_file).post(f"/api/v1/copy-targets/{_name(name)}/policy", body)
    vms_shown = target["vm_pattern"] or "(none)"
    console.print(f"copy target {name}: VMs {vms_shown}, keep {target['keep'] or 'all'}")


@app.command("prune")
@one_line_errors
def copy_prune(
    name: Annotated[str, typer.Argument(help="The copy target")],
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Run a target's retention now: expired, unlocked chains go; kept ones stay locked."""
    done = _client(hub_url, token_file).post(f"/api/v1/copy-targets/{_name(name)}/prune", {})
    console.print(
        f"{done['kept']} points kept, {done['removed']} removed, {done['waiting']} chains "
        f"waiting for their locks to run out, {done['extended']} locks extended"
    )


@app.command("fetch")
@one_line_errors
def copy_fetch(
    name: Annotated[str, typer.Argument(help="The copy target")],
    point: Annotated[str, typer.Argument(help="A copied restore point's id")],
    repository: Annotated[str | None, typer.Option(help="Into this repository")] = None,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Bring a copied point back into a repository: then every restore works on it."""
    client = _client(hub_url, token_file)
    path = f"/api/v1/copy-targets/{_name(name)}/points/{_name(point)}/fetch"
    _run(client, path, {"repository": repository})


@app.command("verify")
@one_line_errors
def copy_verify(
    name: Annotated[str, typer.Argument(help="The copy target")],
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Read every object of a target back and check it against its manifest."""
    _run(_client(hub_url, token_file), f"/api/v1/copy-targets/{_name(name)}/verify", {})
