"""`/meters`: create, read, update, list, archive and unarchive."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from .deps import Emu, Page, newest_first, require_auth
from .errors import not_found, unprocessable
from .ids import new_id
from .metering import filter_depth
from .schemas import MeterCreate, MeterUpdate
from .state import Obj, public
from .timeutil import now_iso

router = APIRouter(dependencies=[Depends(require_auth)], tags=["meters"])

MAX_FILTER_DEPTH = 3


def get_meter(emu: Emu, meter_id: str) -> Obj:
    meter = emu.state.meters.get(meter_id)
    if meter is None:
        raise not_found("meter", meter_id)
    return meter


@router.post("/meters")
async def create_meter(body: MeterCreate, emu: Emu) -> Obj:
    if body.aggregation.type != "count" and not body.aggregation.key:
        raise unprocessable(f"aggregation.key is required for {body.aggregation.type} meters")
    meter_filter = body.filter.model_dump(mode="json") if body.filter else None
    if meter_filter and filter_depth(meter_filter) > MAX_FILTER_DEPTH:
        raise unprocessable(f"filters can nest at most {MAX_FILTER_DEPTH} levels")
    now = now_iso()
    meter: Obj = {
        "id": new_id("mtr"),
        "business_id": emu.settings.business_id,
        "name": body.name,
        "event_name": body.event_name,
        "measurement_unit": body.measurement_unit,
        "aggregation": {"type": body.aggregation.type, "key": body.aggregation.key},
        "description": body.description,
        "filter": meter_filter,
        "created_at": now,
        "updated_at": now,
        "_archived": False,
    }
    emu.state.meters[meter["id"]] = meter
    return public(meter)


@router.get("/meters/{meter_id}")
async def retrieve_meter(meter_id: str, emu: Emu) -> Obj:
    return public(get_meter(emu, meter_id))


@router.patch("/meters/{meter_id}")
async def update_meter(meter_id: str, body: MeterUpdate, emu: Emu) -> Obj:
    meter = get_meter(emu, meter_id)
    for field in body.model_fields_set:
        value = getattr(body, field)
        if value is None and field != "description":
            continue
        meter[field] = value
    meter["updated_at"] = now_iso()
    return public(meter)


@router.get("/meters")
async def list_meters(emu: Emu, page: Page, archived: bool = False) -> Obj:
    items = [m for m in newest_first(list(emu.state.meters.values())) if bool(m["_archived"]) == archived]
    return {"items": [public(m) for m in page.slice(items)]}


@router.delete("/meters/{meter_id}")
async def archive_meter(meter_id: str, emu: Emu) -> Response:
    get_meter(emu, meter_id)["_archived"] = True
    return Response(status_code=200)


@router.post("/meters/{meter_id}/unarchive")
async def unarchive_meter(meter_id: str, emu: Emu) -> Response:
    get_meter(emu, meter_id)["_archived"] = False
    return Response(status_code=200)
