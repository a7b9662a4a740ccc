"""`/policies`: the policies and their schedules, a form to make or change one, and
beside it a live preview of what its rules would keep of a VM's restore points
and why (the prune's dry run, drawn as a calendar)."""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from sendense.common.errors import SendenseError
from sendense.hub.api.deps import HubDep, QueriesDep
from sendense.hub.console.session import BrowserDep
from sendense.hub.console.views import PageRoute, page
from sendense.hub.retention.rules import RULES, KeepRules

router = APIRouter(include_in_schema=False, route_class=PageRoute)
Count = Annotated[int, Query(ge=0, le=1_000_000)]


@router.get("/policies")
def policies(
    request: Request, hub: HubDep, queries: QueriesDep, browser: BrowserDep, edit: str | None = None
) -> HTMLResponse:
    known = hub.policies.list()
    editing = next((p for p in known if p.name == edit), None)
    return page(
        request,
        "policies.html",
        browser,
        policies=known,
        editing=editing,
        rules=RULES,
        schedules={s.policy: s for s in hub.scheduler.schedules()},
        vms=[v.name for v in queries.vms()],
    )


@router.get("/policies/preview")
def preview(
    request: Request,
    hub: HubDep,
    queries: QueriesDep,
    browser: BrowserDep,
    vm: Annotated[str, Query(min_length=1, max_length=255)],
    keep_last: Count = 0,
    keep_hourly: Count = 0,
    keep_daily: Count = 0,
    keep_weekly: Count = 0,
    keep_monthly: Count = 0,
    keep_yearly: Count = 0,
) -> HTMLResponse:
    """The fragment: each point of `vm` kept or not under these rules, and why."""
    rules = KeepRules(
        last=keep_last,
        hourly=keep_hourly,
        daily=keep_daily,
        weekly=keep_weekly,
        monthly=keep_monthly,
        yearly=keep_yearly,
    )
    zone = ZoneInfo(hub.settings.time_zone)
    try:
        decisions = hub.prune.plan(queries.vm(vm).id, rules)
        error = None
    except SendenseError as exc:
        decisions, error = [], exc.message
    months: dict[tuple[int, int], dict[date, list[object]]] = defaultdict(lambda: defaultdict(list))
    for d in decisions:
        day = d.at.astimezone(zone).date()
        months[(day.year, day.month)][day].append(d)
    return page(
        request,
        "policy_preview.html",
        browser,
        decisions=decisions,
        months=sorted(months.items(), reverse=True),
        kept=sum(1 for d in decisions if d.keep),
        error=error,
        vm=vm,
    )
