"""`sendense restore vm`: a restore point back to vCenter as a VM, through the node."""

from __future__ import annotations

from typing import Annotated

import typer

from sendense.cli.client import HubClient, read_token
from sendense.cli.hub import HubUrlOpt, TokenFileOpt
from sendense.cli.output import console, human_bytes, one_line_errors
from sendense.cli.watch import watch_job
from sendense.common.errors import SendenseError


@one_line_errors
def vm(
    point: Annotated[str, typer.Argument(help="The restore point id")],
    name: Annotated[str, typer.Option("--name", help="Name of the VM to create")],
    datastore: Annotated[
        str | None, typer.Option(help="Datastore for the VM (default: where its first disk was)")
    ] = None,
    folder: Annotated[
        str | None, typer.Option(help="VM folder: inventory path, or a path under vm/")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a powered-off VM of that name")
    ] = False,
    power_on: Annotated[
        bool, typer.Option("--power-on", help="Power the VM on once restored")
    ] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Show progress until it ends")] = False,
    vcenter: Annotated[str | None, typer.Option(help="Which vCenter, if several")] = None,
    hub_url: HubUrlOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Restore a whole VM: the point's disks, controllers and device keys, as a new VM
    (powered off unless --power-on). An existing VM is replaced only with --force,
    and never while it runs."""
    client = HubClient(hub_url, read_token(token_file))
    body = {
        "name": name,
        "datastore": datastore,
        "folder": folder,
        "force": force,
        "power_on": power_on,
        "vcenter": vcenter,
    }
    queued = client.post(f"/api/v1/restore-points/{point}/restore-vm", body)
    job_id = queued["job_id"]
    verb = "replacing the VM there" if queued["replaces"] else "a new VM"
    console.print(
        f"job {job_id} queued: {queued['vm_name']} in {queued['folder']} on datastore "
        f"{queued['datastore']} ({human_bytes(queued['bytes_needed'])}), {verb}"
    )
    for warning in queued["warnings"]:
        console.print(f"warning: {warning}")
    if not watch:
        return
    job = watch_job(client, job_id, lambda d: f"disk {d['disk_key']}")
    if job["state"] != "complete":
        raise SendenseError(f"restore job {job_id} {job['state']}: {job['error']}")
    try:
        done = client.get(f"/api/v1/jobs/{job_id}/restore-progress")
    except SendenseError:
        done = {"vm_path": name, "powered_on": power_on, "warnings": []}
    for warning in done["warnings"]:
        console.print(f"warning: {warning}")
    state = "powered on" if done["powered_on"] else "powered off"
    console.print(f"VM {done['vm_path'] or name} restored ({state})")
