"""What a key holder may read about itself: the models it may call (`GET /v1/models`), its
balance (`GET /v1/billing/balance`) and its spend tier (`GET /v1/billing/tier`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from tollgate_gateway.auth import KeyRecord
from tollgate_gateway.billing import usd_exact
from tollgate_gateway.errors import GatewayError, model_not_found
from tollgate_money import nanos_to_cents_floor

if TYPE_CHECKING:
    from tollgate_gateway.runtime import Runtime

# A fixed `created` for every listed model: the price book, not a provider, is the source.
MODEL_CREATED = 1_700_000_000


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": MODEL_CREATED, "owned_by": "tollgate"}


async def get(rt: Runtime, key: KeyRecord, path: str) -> tuple[int, bytes]:
    if path == "/v1/models":
        names = sorted(m for m in rt.book.models if key.allows(m))
        return 200, orjson.dumps({"object": "list", "data": [_model(m) for m in names]})
    if path.startswith("/v1/models/"):
        name = path[len("/v1/models/"):]
        if name not in rt.book.models or not key.allows(name):
            raise model_not_found(name)
        return 200, orjson.dumps(_model(name))
    if path == "/v1/billing/balance":
        return 200, orjson.dumps(await balance(rt, key))
    if path == "/v1/billing/tier":
        return 200, orjson.dumps(await tier(rt, key))
    raise GatewayError(404, f"Invalid URL (GET {path})", "invalid_request_error")


async def _snapshot(rt: Runtime, customer_id: str) -> dict[str, str]:
    snap = await rt.hot.snapshot(customer_id)
    if "loaded" not in snap:
        await rt.loader.load(customer_id)
        snap = await rt.hot.snapshot(customer_id)
    return snap


def _int(snap: dict[str, str], name: str) -> int:
    try:
        return int(float(snap.get(name) or 0))
    except ValueError:
        return 0


def _money(nanos: int) -> dict[str, Any]:
    return {"nanos": nanos, "cents": nanos_to_cents_floor(nanos), "usd": usd_exact(nanos)}


async def balance(rt: Runtime, key: KeyRecord) -> dict[str, Any]:
    snap = await _snapshot(rt, key.customer_id)
    posted = _int(snap, "bal")
    unposted = _int(snap, "unposted")
    reserved = _int(snap, "reserved")
    return {
        "object": "billing.balance",
        "customer_id": key.customer_id,
        "currency": "usd",
        "available": _money(posted - unposted - reserved),
        "posted": _money(posted),
        "pending_usage": _money(unposted),
        "reserved": _money(reserved),
        "plan": snap.get("plan") or None,
        "status": snap.get("status") or "active",
        "topup_url": rt.settings.topup_url,
    }


async def tier(rt: Runtime, key: KeyRecord) -> dict[str, Any]:
    """Limits from the hot state (what is enforced); spend and the next tier from the tier
    service's `tier.hot_limits` when it is deployed, else the next tier from the tiers file."""
    snap = await _snapshot(rt, key.customer_id)
    table = rt.tiers
    current = table.by_name(snap.get("tier") or "") or table.tiers[0]
    try:
        row = await rt.pg.tier_row(key.customer_id)
    except Exception:  # informative only: the limits come from Redis anyway
        row = None
    spend = row.get("lifetime_spend_nanos") if row else None
    spend = spend if isinstance(spend, int) else None
    next_tier: dict[str, Any] | None = None
    if row is not None and "next_tier" in row:
        # The tier service knows pins: a pinned customer has no next tier.
        if row["next_tier"] is not None:
            following = table.by_name(str(row["next_tier"]))
            threshold = row.get("next_tier_min_spend_nanos")
            next_tier = {
                "tier": str(row["next_tier"]),
                "rpm": following.rpm if following else None,
                "tpm": following.tpm if following else None,
                "min_spend": _money(int(threshold)) if isinstance(threshold, int) else None,
            }
    else:
        following = table.next_after(current)
        if following is not None:
            next_tier = {
                "tier": following.name, "rpm": following.rpm, "tpm": following.tpm,
                "min_spend": _money(following.min_spend),
            }
    if next_tier is not None:
        threshold_nanos = next_tier["min_spend"]["nanos"] if next_tier["min_spend"] else None
        next_tier["spend_to_go"] = (
            _money(max(0, threshold_nanos - spend)) if spend is not None and threshold_nanos is not None else None
        )
    return {
        "object": "billing.tier",
        "customer_id": key.customer_id,
        "tier": current.name if not snap.get("tier") else snap["tier"],
        "rpm": _int(snap, "rpm") if "rpm" in snap else current.rpm,
        "tpm": _int(snap, "tpm") if "tpm" in snap else current.tpm,
        "lifetime_spend": _money(spend) if spend is not None else None,
        "next_tier": next_tier,
    }
