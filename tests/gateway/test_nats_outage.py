"""Usage is never lost: while NATS is down requests are still served and their usage events go
to the durable spool (also when the gateway shuts down meanwhile); once NATS is back, a gateway
sends them - each one exactly once in the USAGE stream."""

from __future__ import annotations

from pathlib import Path

from openai.types.chat import ChatCompletionMessageParam

from support.servers import Infra, eventually
from tollgate_hotstate import HotState

from .conftest import GatewayFactory, Seeder, TapFactory, Upstream

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello while the bus is down"}]


async def test_nats_outage_spools_usage_and_delivers_it_once_when_back(
    gateway_factory: GatewayFactory, seed: Seeder, usage_tap: TapFactory, hot: HotState, upstream: Upstream,
    clean_bus: Infra, clean_redis: Infra, workdir: Path,
) -> None:
    infra = clean_bus
    spool = workdir / "outage-spool"
    customer = await seed()
    served: list[str] = []
    try:
        async with gateway_factory(spool_dir=spool) as first:
            client = first.client(customer.key)
            before = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
            served.append(before.headers["x-request-id"])
            infra.nats.kill()
            for _ in range(3):
                raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
                assert raw.parse().choices[0].message.content
                served.append(raw.headers["x-request-id"])
            # the gateway stops before NATS returns: what it holds is in the spool, not lost
        assert list(spool.glob("usage-*.db")), "the outage left nothing in the spool"
    finally:
        infra.nats.start()

    tap = await usage_tap(customer.id)
    async with gateway_factory(spool_dir=spool):  # a new process adopts the old spool file
        events = await eventually(lambda: tap.events if len(tap.events) >= 4 else None, timeout=20)
        assert sorted(e["event_id"] for e in events) == sorted(served)
        assert {e["status"] for e in events} == {"ok"}
    assert len(tap.events) == 4  # JetStream de-duplicated nothing because nothing was sent twice
    costs = sum(e["cost_nanos"] for e in events)
    assert await hot.available(customer.id) == 10**9 - costs
    assert list(spool.glob("usage-*.db")) == []  # drained spool files are removed


async def test_a_running_gateway_resends_its_spool_when_nats_returns(
    gateway_factory: GatewayFactory, seed: Seeder, usage_tap: TapFactory, upstream: Upstream,
    clean_bus: Infra, clean_redis: Infra,
) -> None:
    infra = clean_bus
    customer = await seed()
    async with gateway_factory() as gw:
        client = gw.client(customer.key)
        served = []
        infra.nats.kill()
        try:
            for _ in range(3):
                stream = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)
                chunks = [c async for c in stream]
                served.append(chunks[0].id)
            assert len(served) == 3
        finally:
            infra.nats.start()
        tap = await usage_tap(customer.id)
        events = await eventually(lambda: tap.events if len(tap.events) >= 3 else None, timeout=20)
        assert len({e["event_id"] for e in events}) == 3 and all(e["cost_nanos"] > 0 for e in events)
