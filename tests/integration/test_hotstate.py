"""The hot state's scripts against a real Redis: reservations never let concurrent requests
spend more than the balance, and settled usage leaves the unposted set only when posted."""

import asyncio

from support.servers import Infra
from tollgate_hotstate import AdmitRequest, Admitted, HotState, NoFunds, RateLimited, create_redis


def request(rid: str, max_out: int = 100) -> AdmitRequest:
    return AdmitRequest(rid, "gpt-4o-mini", 300, 1500, 600_000_000, max_out, 16, 60_000, 0)


async def test_concurrent_admissions_never_exceed_the_balance(clean_redis: Infra) -> None:
    hot = HotState(create_redis(clean_redis.redis_url))
    await hot.load("c", {"bal": 10 * 61_500, "seq": 1, "rpm": 0, "tpm": 0, "plan": ""})
    results = await asyncio.gather(*(hot.admit("c", request(f"r{i}")) for i in range(200)))
    admitted = [r for r in results if isinstance(r, Admitted)]
    assert len(admitted) == 10
    assert sum(r.hold for r in admitted) <= 10 * 61_500
    assert all(isinstance(r, NoFunds) for r in results if not isinstance(r, Admitted))


async def test_low_balance_lowers_max_tokens_instead_of_refusing(clean_redis: Infra) -> None:
    hot = HotState(create_redis(clean_redis.redis_url))
    await hot.load("c", {"bal": 1500 + 600 * 40, "seq": 1, "rpm": 0, "tpm": 0, "plan": ""})
    result = await hot.admit("c", request("r1", max_out=1000))
    assert isinstance(result, Admitted) and result.max_out == 40 and result.available_after == 0
    assert isinstance(await hot.admit("c", request("r2")), NoFunds)


async def test_rpm_is_exact_and_settle_then_mirror_counts_once(clean_redis: Infra) -> None:
    hot = HotState(create_redis(clean_redis.redis_url))
    await hot.load("c", {"bal": 10**9, "seq": 1, "rpm": 3, "tpm": 0, "plan": ""})
    verdicts = [await hot.admit("c", request(f"r{i}")) for i in range(5)]
    assert [type(v).__name__ for v in verdicts] == ["Admitted"] * 3 + ["RateLimited"] * 2
    limited = verdicts[3]
    assert isinstance(limited, RateLimited) and limited.kind == "requests" and limited.retry_after_ms > 0
    for i in range(3):
        await hot.settle("c", f"r{i}", cost=1000, mode="credits", list_price=1000, tokens_refund=0, event_json=b"{}")
    assert await hot.available("c") == 10**9 - 3000
    # the ledger posts r0 and r1 (seq 2), then a late duplicate of an older version arrives
    await hot.mirror("c", 10**9 - 2000, 2, ["r0", "r1"])
    assert await hot.available("c") == 10**9 - 3000
    await hot.mirror("c", 10**9 - 1000, 1, ["r0"])
    assert await hot.available("c") == 10**9 - 3000
    await hot.mirror("c", 10**9 - 3000, 3, ["r2"])
    assert await hot.available("c") == 10**9 - 3000
    snap = await hot.snapshot("c")
    assert snap["unposted"] == "0" and snap["reserved"] == "0"
