"""The mapping from a usage message to Dodo events, without I/O: what every replica sends."""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import orjson
import pytest
from dodopayments._utils import async_maybe_transform
from dodopayments.types import usage_event_ingest_params
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic_core import PydanticUndefined

from metering.emulator import BOOK, usage
from tollgate_contracts.events import UsageRecorded
from tollgate_dodo.catalogue import Catalogue
from tollgate_dodo.meters import to_decimal
from tollgate_metering import ingest, mapping
from tollgate_metering.mapping import Mapper, Permanent, Skip, json_number, ratio_number

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


# -- the fast paths agree with the exact ones ---------------------------------------------------
# mapping.py decodes plain messages with msgspec and computes weighted credit readings with
# integers; everything else goes through UsageRecorded and tollgate_dodo.meters.readings. Both
# must give the same Mapped (or the same refusal) for every message.



class _Refuse:
    def decode(self, data: bytes) -> Any:
        raise msgspec.DecodeError("forced onto the model's path")


def _outcome(m: Mapper, data: bytes, *, exact: bool, replay: bool = False) -> Any:
    saved = mapping._PLAIN, m.fast_weighted
    if exact:
        mapping._PLAIN, m.fast_weighted = _Refuse(), False  # type: ignore[assignment]
    try:
        result = m.map(data, now=NOW, replay=replay)
        return ("ok", result.request_id, result.customer_id, result.occurred_at, result.events)
    except (Permanent, Skip) as exc:
        return (type(exc).__name__, getattr(exc, "code", ""), str(exc))
    except Exception as exc:  # e.g. naive times: the same failure either way
        return ("error", type(exc).__name__)
    finally:
        mapping._PLAIN, m.fast_weighted = saved


def _plain_dict(**overrides: Any) -> dict[str, Any]:
    doc = orjson.loads(raw(model="gpt-4o-mini", input_tokens=1234, output_tokens=56, occurred_at=NOW))
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not _DROP}


_DROP = object()
_T = (NOW - timedelta(minutes=3)).replace(microsecond=654321)
VARIANTS: list[dict[str, Any]] = [
    {},
    {"occurred_at": _T.isoformat()},
    {"occurred_at": _T.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
    {"occurred_at": _T.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")},
    {"occurred_at": _T.replace(microsecond=500000).strftime("%Y-%m-%dT%H:%M:%S.5Z")},
    {"occurred_at": _T.strftime("%Y-%m-%dT%H:%M:%S.000000Z")},
    {"occurred_at": _T.strftime("%Y-%m-%dT%H:%M:%S.%f-00:00")},
    {"occurred_at": _T.astimezone(__import__("datetime").timezone(timedelta(hours=-7))).isoformat()},
    {"occurred_at": _T.strftime("%Y-%m-%dT%H:%M:%S.%f") + "9Z"},  # 7 digits: the model truncates
    {"occurred_at": _T.strftime("%Y-%m-%dT%H:%M:%S.Z")},
    {"occurred_at": _T.replace(tzinfo=None).isoformat()},  # naive
    {"occurred_at": int(_T.timestamp())},
    {"occurred_at": (NOW - timedelta(hours=2)).isoformat()},
    {"occurred_at": (NOW + timedelta(minutes=30)).isoformat()},
    {"started_at": "2026-02-30T00:00:00Z"},
    {"started_at": "yesterday"},
    {"input_tokens": "1234"},
    {"input_tokens": 1234.0},
    {"input_tokens": -1},
    {"input_tokens": True},
    {"output_tokens": 10**30},
    {"cached_input_tokens": 5000},
    {"cached_input_tokens": 100},
    {"estimated": "true"},
    {"estimated": True, "status": "cut_off", "plan": "team"},
    {"billing_mode": "subscription", "cost_nanos": 0, "plan": "plus"},
    {"billing_mode": "free", "cost_nanos": 0, "dodo_customer_id": None},
    {"billing_mode": "gift"},
    {"status": "weird"},
    {"dodo_customer_id": None},
    {"dodo_customer_id": ""},
    {"dodo_customer_id": 7},
    {"model": "gpt-9"},
    {"model": "o1", "cost_nanos": 123},
    {"cost_nanos": 0},
    {"schema_version": "1"},
    {"event_id": None},
    {"key_id": _DROP},
    {"extra_field": {"nested": [1, 2]}},
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=[str(i) for i in range(len(VARIANTS))])
@pytest.mark.parametrize("policy", ["deadletter", "skip_plan_usage"])
@pytest.mark.parametrize("replay", [False, True])
def test_fast_and_exact_paths_agree(overrides: dict[str, Any], policy: str, replay: bool) -> None:
    data = json.dumps(_plain_dict(**overrides)).encode()  # stdlib: numbers past 64 bits too
    assert _outcome(mapper(policy), data, exact=False, replay=replay) == _outcome(
        mapper(policy), data, exact=True, replay=replay
    )


@pytest.mark.parametrize("data", [b"", b"[]", b"{", b"null", b'{"event_id": "\\ud800"}', raw() + b"x",
                                  raw().replace(b"{", b'{"event_id":"dup",', 1)])
def test_fast_and_exact_paths_agree_on_odd_bytes(data: bytes) -> None:
    assert _outcome(mapper(), data, exact=False) == _outcome(mapper(), data, exact=True)


def test_plain_messages_take_the_fast_path() -> None:
    usage_, _, iso = mapping.decode(raw(occurred_at=NOW))
    assert isinstance(usage_, mapping._Plain) and iso == NOW.isoformat()
    assert mapper().fast_weighted


def test_a_missing_time_is_the_model_s_to_fill() -> None:
    usage_, occurred_at, iso = mapping.decode(orjson.dumps(_plain_dict(occurred_at=_DROP)))
    assert isinstance(usage_, UsageRecorded) and iso is None
    assert abs((occurred_at - datetime.now(UTC)).total_seconds()) < 60


def test_the_mirror_has_the_contract_s_fields_and_defaults() -> None:
    mirror = {f.name: f for f in msgspec.structs.fields(mapping._Plain)}
    assert set(mirror) == set(UsageRecorded.model_fields)
    for name, field in UsageRecorded.model_fields.items():
        if name == "occurred_at":  # required in the mirror: a missing time is the model's to fill
            assert mirror[name].required
            continue
        if field.is_required():
            assert mirror[name].required, name
        else:
            assert mirror[name].default == field.default, name
            assert field.default is not PydanticUndefined


@settings(max_examples=2000, deadline=None)
@given(numerator=st.integers(0, 10**22), denominator=st.integers(1, 10**13))
def test_ratio_number_is_json_number_of_to_decimal(numerator: int, denominator: int) -> None:
    expected = json_number(to_decimal(numerator, denominator))
    got = ratio_number(numerator, denominator)
    assert got == expected and type(got) is type(expected)


def test_ratio_number_edges() -> None:
    rng = random.Random(6)
    cases = [(0, 1), (1, 3), (2, 3), (10**15, 1), (10**15 - 1, 1), (10**16 + 1, 7), (10**15 * 3 + 1, 3),
             (123456789012345678, 10**6), (1, 10**13), (10**12, 10**12 + 1)]
    cases += [(rng.randrange(10**18), rng.randrange(1, 10**10)) for _ in range(20_000)]
    for numerator, denominator in cases:
        expected = json_number(to_decimal(numerator, denominator))
        got = ratio_number(numerator, denominator)
        assert got == expected and type(got) is type(expected), (numerator, denominator)
        assert orjson.dumps(got) == orjson.dumps(expected)


@settings(max_examples=500, deadline=None)
@given(
    model=st.sampled_from(sorted(BOOK.models)), input_tokens=st.integers(0, 3_000_000),
    cached=st.integers(0, 3_000_000), output_tokens=st.integers(0, 600_000), extra_cost=st.integers(-5, 5),
)
def test_weighted_fast_readings_equal_the_library_s(
    model: str, input_tokens: int, cached: int, output_tokens: int, extra_cost: int
) -> None:
    doc = _plain_dict(model=model, input_tokens=input_tokens, cached_input_tokens=cached, output_tokens=output_tokens)
    doc["cost_nanos"] = max(0, doc["cost_nanos"] + extra_cost)
    data = orjson.dumps(doc)
    assert _outcome(mapper(), data, exact=False) == _outcome(mapper(), data, exact=True)


def test_mapped_is_a_plain_dataclass() -> None:
    # the consumer relies on these fields only
    assert [f.name for f in dataclasses.fields(mapping.Mapped)] == ["request_id", "customer_id", "occurred_at",
                                                                    "events"]


def test_msgspec_takes_no_time_pydantic_refuses() -> None:
    # started_at is validated by msgspec on the fast path: anything it accepts, the model accepts.
    from pydantic import TypeAdapter

    model = TypeAdapter(datetime)
    rng = random.Random(11)
    alphabet = "0123456789-:.TtZz +,_W/"
    seeds = ["2026-11-30T02:41:00.123456+00:00", "2026-11-30T02:41:00Z", "2026-02-28T23:59:59.9-12:30"]
    checked = 0
    for _ in range(20_000):
        text = list(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(text))
            op = rng.random()
            if op < 0.4:
                text[i] = rng.choice(alphabet)
            elif op < 0.7:
                del text[i]
            else:
                text.insert(i, rng.choice(alphabet))
        candidate = "".join(text)
        data = orjson.dumps(_plain_dict(started_at=candidate))
        try:
            mapping._PLAIN.decode(data)
        except msgspec.ValidationError:
            continue
        checked += 1
        model.validate_python(candidate)  # raises if msgspec took a time the model refuses
        UsageRecorded.model_validate_json(data)
    assert checked > 1000
