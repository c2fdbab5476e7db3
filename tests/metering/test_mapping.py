"""The mapping from a usage message to Dodo events, without I/O: what every replica sends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from dodopayments._utils import async_maybe_transform
from dodopayments.types import usage_event_ingest_params

from metering.emulator import BOOK, usage
from tollgate_dodo.catalogue import Catalogue
from tollgate_metering import ingest
from tollgate_metering.mapping import Mapper, Permanent, Skip

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
CATALOGUE = Catalogue(
    credit_entitlement_id="cde_1", packs=[], meter_strategy="weighted",
    meters={name: f"mtr_{i}" for i, name in enumerate(
        ("llm.input_tokens", "llm.output_tokens", "llm.subscription.input_tokens", "llm.subscription.output_tokens")
    )},
    reference_input_per_m=BOOK.models["gpt-4o"].input_per_m, reference_output_per_m=BOOK.models["gpt-4o"].output_per_m,
)


def mapper(policy: str = "deadletter", catalogue: Catalogue = CATALOGUE) -> Mapper:
    return Mapper(catalogue, BOOK, policy, 55 * 60)  # type: ignore[arg-type]


def raw(**kwargs: object) -> bytes:
    options: dict[str, object] = {"request_id": "req_1", "customer": "acme", "dodo_customer": "cus_1", **kwargs}
    return usage(**options).model_dump_json().encode()  # type: ignore[arg-type]


async def test_the_request_body_is_what_the_sdk_would_send() -> None:
    mapped = mapper().map(raw(model="gpt-4o-mini", input_tokens=999, output_tokens=1, occurred_at=NOW), now=NOW)
    sdk_body = await async_maybe_transform({"events": mapped.events}, usage_event_ingest_params.UsageEventIngestParams)
    assert orjson.loads(ingest.encode(mapped.events)) == sdk_body


def test_events_carry_the_usage_time_and_deterministic_ids() -> None:
    mapped = mapper().map(raw(occurred_at=NOW - timedelta(minutes=10)), now=NOW)
    assert [e["event_id"] for e in mapped.events] == ["req_1:llm.input_tokens", "req_1:llm.output_tokens"]
    assert {e["timestamp"] for e in mapped.events} == {(NOW - timedelta(minutes=10)).isoformat()}
    assert mapped.events[0]["metadata"]["tollgate_customer_id"] == "acme"


def test_a_gateway_clock_ahead_of_dodo_is_stamped_now() -> None:
    ahead = NOW + timedelta(minutes=30)
    mapped = mapper().map(raw(occurred_at=ahead), now=NOW)
    assert mapped.events[0]["timestamp"] == NOW.isoformat()
    assert mapped.events[0]["metadata"]["occurred_at"] == ahead.isoformat()


def test_old_usage_is_refused_unless_replayed() -> None:
    old = NOW - timedelta(minutes=56)
    with pytest.raises(Permanent) as refused:
        mapper().map(raw(occurred_at=old), now=NOW)
    assert refused.value.code == "too_old"
    replayed = mapper().map(raw(occurred_at=old), now=NOW, replay=True)
    assert replayed.events[0]["metadata"]["replayed"] is True


def test_missing_customer_policy_only_ever_skips_plan_usage() -> None:
    with pytest.raises(Skip):
        mapper("skip_plan_usage").map(raw(dodo_customer=None, billing_mode="free"), now=NOW)
    with pytest.raises(Permanent):
        mapper("skip_plan_usage").map(raw(dodo_customer=None), now=NOW)
    with pytest.raises(Permanent):
        mapper().map(raw(dodo_customer=None, billing_mode="free"), now=NOW)


def test_unknown_models_and_garbage_are_permanent() -> None:
    with pytest.raises(Permanent) as unknown:
        mapper().map(raw(model="gpt-9"), now=NOW)
    assert unknown.value.code == "unknown_model"
    with pytest.raises(Permanent) as garbage:
        mapper().map(b'{"hello": "world"}', now=NOW)
    assert garbage.value.code == "invalid_payload"
    per_model = CATALOGUE.model_copy(update={"meter_strategy": "per_model_meters"})
    with pytest.raises(Permanent) as no_meter:
        mapper(catalogue=per_model).map(raw(), now=NOW)
    assert no_meter.value.code == "no_meter"
