"""`/webhooks`: webhook endpoint management (cursor-paged list, secret, custom headers)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from .deps import Emu, require_auth
from .errors import not_found
from .ids import new_id
from .schemas import WebhookCreate, WebhookHeadersIn, WebhookUpdate
from .state import Obj
from .timeutil import now_iso

router = APIRouter(dependencies=[Depends(require_auth)], tags=["webhooks"])


def get_endpoint(emu: Emu, webhook_id: str) -> Obj:
    endpoint = emu.state.webhook_endpoints.get(webhook_id)
    if endpoint is None:
        raise not_found("webhook", webhook_id)
    return endpoint


def render_endpoint(endpoint: Obj) -> Obj:
    return {
        "id": endpoint["id"],
        "url": endpoint["url"],
        "description": endpoint["description"],
        "metadata": endpoint["metadata"],
        "created_at": endpoint["created_at"],
        "updated_at": endpoint["updated_at"],
        "disabled": endpoint["disabled"],
        "filter_types": endpoint["filter_types"],
        "rate_limit": endpoint["rate_limit"],
    }


@router.post("/webhooks")
async def create_webhook(body: WebhookCreate, emu: Emu) -> Obj:
    if body.idempotency_key and body.idempotency_key in emu.state.webhook_idempotency:
        existing = emu.state.webhook_endpoints.get(emu.state.webhook_idempotency[body.idempotency_key])
        if existing is not None:
            return render_endpoint(existing)
    now = now_iso()
    endpoint: Obj = {
        "id": new_id("ep"),
        "url": body.url,
        "description": body.description or "",
        "metadata": body.metadata or {},
        "created_at": now,
        "updated_at": now,
        "disabled": bool(body.disabled),
        "filter_types": list(body.filter_types or []),
        "rate_limit": body.rate_limit,
        "headers": dict(body.headers or {}),
    }
    emu.state.webhook_endpoints[endpoint["id"]] = endpoint
    if body.idempotency_key:
        emu.state.webhook_idempotency[body.idempotency_key] = endpoint["id"]
    return render_endpoint(endpoint)


@router.get("/webhooks/{webhook_id}")
async def retrieve_webhook(webhook_id: str, emu: Emu) -> Obj:
    return render_endpoint(get_endpoint(emu, webhook_id))


@router.patch("/webhooks/{webhook_id}")
async def update_webhook(webhook_id: str, body: WebhookUpdate, emu: Emu) -> Obj:
    endpoint = get_endpoint(emu, webhook_id)
    for field in body.model_fields_set:
        value = getattr(body, field)
        if field == "url" and value is None:
            continue
        if field in ("metadata", "filter_types"):
            value = value or ({} if field == "metadata" else [])
        elif field == "description":
            value = value or ""
        elif field == "disabled":
            value = bool(value)
        endpoint[field] = value
    endpoint["updated_at"] = now_iso()
    return render_endpoint(endpoint)


@router.delete("/webhooks/{webhook_id}")
async def delete_webhook(webhook_id: str, emu: Emu) -> Response:
    get_endpoint(emu, webhook_id)
    del emu.state.webhook_endpoints[webhook_id]
    return Response(status_code=200)


@router.get("/webhooks")
async def list_webhooks(
    emu: Emu,
    iterator: str | None = None,
    limit: Annotated[int, Query(ge=1, le=250)] = 50,
) -> Obj:
    endpoints = list(emu.state.webhook_endpoints.values())
    start = 0
    if iterator:
        ids = [e["id"] for e in endpoints]
        start = ids.index(iterator) + 1 if iterator in ids else len(ids)
    page = endpoints[start : start + limit]
    done = start + limit >= len(endpoints)
    return {
        "data": [render_endpoint(e) for e in page],
        "iterator": None if done or not page else page[-1]["id"],
        "done": done,
    }


@router.get("/webhooks/{webhook_id}/secret")
async def retrieve_secret(webhook_id: str, emu: Emu) -> Obj:
    get_endpoint(emu, webhook_id)
    return {"secret": emu.settings.webhook_secret}


@router.get("/webhooks/{webhook_id}/headers")
async def retrieve_headers(webhook_id: str, emu: Emu) -> Obj:
    return {"headers": dict(get_endpoint(emu, webhook_id)["headers"]), "sensitive": []}


@router.patch("/webhooks/{webhook_id}/headers")
async def update_headers(webhook_id: str, body: WebhookHeadersIn, emu: Emu) -> Response:
    endpoint = get_endpoint(emu, webhook_id)
    endpoint["headers"].update(body.headers)  # Dodo: "header-value pairs to update or add"
    endpoint["updated_at"] = now_iso()
    return Response(status_code=200)
