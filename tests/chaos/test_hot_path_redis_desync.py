"""Found by the chaos run: the gateway's pipelined Redis client (tollgate_gateway.resp) matches
replies to commands by position and keeps using a connection after a command timed out. If the
bytes of some commands are lost on a connection that stays open (the fault proxy's `timeout`
toxic, Toxiproxy's timeout=0: a black-holing middlebox), every later reply on that connection is
handed to the wrong command - in the gateway, request A is admitted (or settled) with the verdict
and hold computed for request B of another customer, and customers overspend their balance.

The fix: the admit and settle scripts end every reply with the request id they were called with,
and the client checks it; a reply naming a later command proves the ones before it were lost, so
they fail (the caller answers 503) and the connection is dropped. This test drives the client with
a script that follows the same convention.

The behaviour a user would notice: the answer to one command is never given to another."""

from __future__ import annotations

import asyncio
import time

from support.servers import Infra
from tollgate_gateway.resp import PipelinedRedis
from tollgate_standins.faultproxy import FaultProxy


async def test_a_reply_is_never_handed_to_another_command(infra: Infra) -> None:
    async with FaultProxy(0, "127.0.0.1", infra.redis.port, seed=7) as proxy:
        client = PipelinedRedis(f"redis://127.0.0.1:{proxy.port}/0", command_timeout_s=0.5)
        # Like admit/settle: the reply carries a result and ends with ARGV[1], the caller's id.
        script = client.register_script("return {'result-' .. ARGV[1], ARGV[1]}", tagged_by_first_arg=True)
        outcomes = {"ok": 0, "failed": 0, "crossed": 0}

        async def one(i: int) -> None:
            try:
                reply = await script(args=[f"command-{i}"])
            except (OSError, ConnectionError, TimeoutError):
                outcomes["failed"] += 1  # an error is fine: the caller answers 503 and nothing moves
                return
            outcomes["ok" if reply[0] == f"result-command-{i}".encode() else "crossed"] += 1

        async def traffic(seconds: float) -> None:
            """Open-loop arrivals, like requests reaching a gateway."""
            tasks, i, stop = [], 0, time.monotonic() + seconds
            while time.monotonic() < stop:
                i += 1
                tasks.append(asyncio.create_task(one(i)))
                await asyncio.sleep(0.002 * (1 + i % 3))
            await asyncio.gather(*tasks)

        running = asyncio.create_task(traffic(2.5))
        await asyncio.sleep(0.3)
        await proxy.set_toxics(timeout=True)  # bytes dropped, connection kept open
        await asyncio.sleep(0.3)
        await proxy.clear_toxics()
        await running
        await client.aclose()

    assert outcomes["ok"] > 0
    assert outcomes["crossed"] == 0, f"replies handed to the wrong command: {outcomes}"
