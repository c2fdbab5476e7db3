"""Issue 7 through every real piece: paying $50 in the Dodo emulator's checkout lifts a customer
from tier-1 to tier-2 (the gateway's own rate-limit headers say so), a $1 refund drops it back,
and replaying every webhook changes nothing."""

from __future__ import annotations

import httpx
import openai
from nats.js.api import DeliverPolicy

from support.servers import eventually
from system.conftest import ADMIN, Stack
from tollgate_platform import bus


async def rpm_limit(client: openai.AsyncOpenAI) -> int:
    """The requests-per-minute limit the gateway enforces, as its headers say (on a 200 or a 429)."""
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        headers = raw.headers
    except openai.RateLimitError as limited:
        headers = limited.response.headers
    return int(headers["x-ratelimit-limit-requests"])


async def tier_changes(nats_url: str, customer_id: str) -> list[bytes]:
    nc = await bus.connect(nats_url, "tier-audit")
    try:
        js = nc.jetstream()
        sub = await js.subscribe(f"tier.changed.{customer_id}", ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.ALL)
        seen: list[bytes] = []
        while True:
            try:
                seen.append((await sub.next_msg(timeout=0.5)).data)
            except TimeoutError:
                return seen
    finally:
        await nc.close()


async def test_paying_fifty_dollars_unlocks_tier_two_and_a_refund_takes_it_back(stack: Stack) -> None:
    async with (
        httpx.AsyncClient(base_url=stack.ledger_url + "/admin/v1", headers=ADMIN, timeout=30) as admin,
        httpx.AsyncClient(base_url=stack.emulator_url, timeout=30) as dodo,
    ):
        customer_id = (await admin.post("/customers", json={"email": "t@example.com", "name": "T"})).json()[
            "customer_id"]
        key = (await admin.post(f"/customers/{customer_id}/keys", json={"name": "k"})).json()["key"]
        await admin.post(f"/customers/{customer_id}/grants",
                         json={"amount_cents": 100, "reason": "trial", "idempotency_key": f"trial-{customer_id}"})
        client = openai.AsyncOpenAI(base_url=stack.gateway_url + "/v1", api_key=key, max_retries=0)
        assert await rpm_limit(client) == 3  # tier-1 of the default table

        fifty = next(p for p in stack.catalogue.packs if p.price_cents == 5000)
        checkout = (await admin.post(f"/customers/{customer_id}/checkout", json={"pack": fifty.name})).json()
        paid = (await dodo.post(f"/_emulator/checkouts/{checkout['session_id']}/pay")).json()
        await eventually(lambda: _rpm_is(client, 10), timeout=10, interval=0.2)

        refund = await dodo.post("/refunds", headers={"Authorization": "Bearer dodo-test-key"}, json={
            "payment_id": paid["payment_id"], "items": [{"item_id": fifty.product_id, "amount": 100}],
        })
        assert refund.status_code == 200, refund.text
        await eventually(lambda: _rpm_is(client, 3), timeout=10, interval=0.2)

        replayed = (await dodo.post("/_emulator/webhooks/redeliver")).json()["redelivered"]
        assert replayed >= 2
        inbox = (await admin.get("/webhooks", params={"limit": 100})).json()
        assert inbox, "the ledger keeps every webhook it received"
    changes = await eventually(lambda: _settled(stack, customer_id), timeout=10)
    assert len(changes) == 2, changes  # up once, down once: the replay changed nothing
    assert await rpm_limit(client) == 3


async def _rpm_is(client: openai.AsyncOpenAI, expected: int) -> bool:
    return await rpm_limit(client) == expected


async def _settled(stack: Stack, customer_id: str) -> list[bytes] | None:
    changes = await tier_changes(stack.nats_url, customer_id)
    return changes if len(changes) >= 2 else None
