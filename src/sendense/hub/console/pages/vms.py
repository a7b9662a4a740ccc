"""`/vms`: the VMs the hub knows and the vCenters' inventory, each with its policy
and "Back up now"; `/vms/{ref}`: one VM's restore points as a chain, and what can
be done with each (verify, protect, restore, download, instant access)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from sendense.common.errors import SendenseError
from sendense.hub.api.deps import HubDep, QueriesDep
from sendense.hub.api.routes.vcenters import vcenter_vms
from sendense.hub.console.overview import overview
from sendense.hub.console.session import BrowserDep
from sendense.hub.console.views import PageRoute, page
from sendense.hub.db.models import Vm
from sendense.hub.retention.policies import matching_policy

router = APIRouter(include_in_schema=False, route_class=PageRoute)


@router.get("/vms")
def vms(request: Request, hub: HubDep, browser: BrowserDep) -> HTMLResponse:
    return page(request, "vms.html", browser, view=overview(hub), vcenters=hub.vcenters.list())


@router.get("/vms/inventory")
def inventory(
    request: Request, hub: HubDep, browser: BrowserDep, only: Literal["unprotected"] | None = None
) -> HTMLResponse:
    """The fragment of VMs each vCenter shows now, asked of its node (slow: loaded
    after the page)."""
    with hub.db.session() as s:
        known = set(s.scalars(select(Vm.name)))
    policies = hub.policies.list()
    found: list[tuple[str, object, str | None]] = []
    errors: list[str] = []
    for vcenter in hub.vcenters.list():
        try:
            answer = vcenter_vms(hub, vcenter.host)
        except SendenseError as exc:
            errors.append(f"{vcenter.host}: {exc.message}")
            continue
        for vm in answer.vms:
            policy = matching_policy(policies, vm.name)
            if only and policy:
                continue
            found.append((vcenter.host, vm, policy.name if policy else None))
    return page(request, "inventory.html", browser, found=found, errors=errors, known=known)


@router.get("/vms/{ref}")
def vm_detail(
    request: Request, hub: HubDep, queries: QueriesDep, browser: BrowserDep, ref: str
) -> HTMLResponse:
    vm = queries.vm(ref)
    points = queries.restore_points(vm.id)
    policy = matching_policy(hub.policies.list(), vm.name)
    tasks = {t.id: t for t in queries.jobs_of(vm.id)}
    return page(
        request,
        "vm.html",
        browser,
        vm=vm,
        points=list(reversed(points)),
        policy=policy,
        tasks=tasks,
        datastores=sorted(
            {
                d.datastore_path.split("]")[0] + "]"
                for d in vm.disks
                if d.datastore_path and "]" in d.datastore_path
            }
        ),
    )
