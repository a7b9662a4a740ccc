"""/metrics: Prometheus' text format, for a token of any role (viewer and up)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from sendense.hub.api.deps import HubDep, authorize
from sendense.hub.tasks.metrics import render

router = APIRouter(tags=["system"], dependencies=[Depends(authorize)])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(hub: HubDep) -> Response:
    pool = hub.settings.nbd_port_max - hub.settings.nbd_port_min + 1
    await run_in_threadpool(hub.node_status)  # probes each node's tunnel now
    body = await run_in_threadpool(render, hub.db, pool)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
