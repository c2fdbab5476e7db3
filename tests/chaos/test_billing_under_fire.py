"""Billing under fire: load through two gateways and two replicas of every consumer while every
part is broken in turn, then an audit of every nano (see docs/chaos-and-security.md).

`make test` runs the reduced profile (test_billing_under_fire_reduced); `make test-chaos` runs
test_billing_under_fire with CHAOS_PROFILE (reduced by default, `full` on demand) and CHAOS_SEED.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from pathlib import Path

import pytest

from chaos.audit import dump, run_audit, summary_table
from chaos.cluster import running_cluster
from chaos.drain import drain
from chaos.faults import Faults
from chaos.load import Load, buy_pack, create_customers, grant, refund, slack_per_customer
from chaos.profile import REDUCED, Profile, chosen_profile, chosen_seed
from support.servers import REPO, Infra
from tollgate_dodo.catalogue import Catalogue


async def billing_under_fire(session_infra: Infra, profile: Profile, seed: int) -> None:
    print(f"\nchaos profile={profile.name} seed={seed} (replay: CHAOS_PROFILE={profile.name} CHAOS_SEED={seed})")
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:6]
    keep = os.environ.get("CHAOS_KEEP_LOGS")
    keep_logs = Path(keep) if keep else REPO / ".run" / "chaos-logs" / f"{profile.name}-{seed}"
    durations: dict[str, float] = {}
    t0 = time.monotonic()
    async with running_cluster(session_infra, seed=seed, name=f"chaos-{run}") as cluster:
        system = cluster.system
        durations["start-up"] = time.monotonic() - t0
        customers = await create_customers(system, rng, grants=profile.grant_customers,
                                           packs=profile.pack_customers, run=run)
        await slack_per_customer(system, customers)
        granted = [c for c in customers if c.kind == "grant"]
        packed = [c for c in customers if c.kind == "pack"]
        for c in granted:
            await grant(system, c, rng.randint(2, 6), f"chaos-{run}-{c.index}")
        half = len(packed) // 2
        for c in packed[:half]:
            await buy_pack(system, c)
        catalogue = Catalogue.load(cluster.infra.workdir / "dodo-catalogue.json")
        assert catalogue is not None
        pack_product = next(p.product_id for p in catalogue.packs if p.price_cents == 500)

        load = Load(system, customers, random.Random(rng.randrange(2**31)))
        skip = frozenset(filter(None, os.environ.get("CHAOS_SKIP_FAULTS", "").split(",")))
        faults = Faults(cluster, random.Random(rng.randrange(2**31)), skip=skip)

        async def money_during_the_run() -> None:
            """Half the packs are bought, and some refunded, while faults happen."""
            for c in packed[half:]:
                await asyncio.sleep(profile.load_s / (len(packed) + 2))
                await buy_pack(system, c)
            for c in packed[: profile.refunds]:
                await refund(system, c, pack_product, rng.choice((50, 100, 125)))

        t1 = time.monotonic()
        load_task = asyncio.create_task(
            load.run(concurrency=profile.concurrency, max_requests=profile.max_requests, max_s=profile.load_s)
        )
        money_task = asyncio.create_task(money_during_the_run())
        try:
            await faults.run(profile.fault_rounds)
        finally:
            await faults.heal()
            load.stop.set()
            await load_task
            await money_task
        durations["load + faults"] = time.monotonic() - t1

        timeline: list[str] = []
        took, left = await drain(cluster, customers, profile.drain_timeout_s, timeline)
        durations["drain"] = took
        t3 = time.monotonic()
        audit = await run_audit(cluster, customers, load.outcomes,
                                [when for service, when in faults.kills if service == "notifier"])
        durations["audit"] = time.monotonic() - t3
        if left:
            audit.fail("drain", None, f"still in flight after {took:.0f} s: {left}")
        report = "\n".join(faults.log + timeline) + summary_table(
            profile.name, seed, load.counts(), faults.injected, audit, durations
        )
        print(report)
        if audit.violations or keep:
            await cluster.preserve(keep_logs)
            (keep_logs / "summary.txt").write_text(report + "\n" + dump(audit))
        assert load.counts()["ok"] > 0, "no request succeeded: the load never ran"
        assert not audit.violations, (
            f"{len(audit.violations)} violations (seed {seed}, logs in {keep_logs}):\n{dump(audit)}"
        )


@pytest.mark.timeout(420)
async def test_billing_under_fire_reduced(infra: Infra) -> None:
    """The reduced profile, in `make test` (CI); `make test-chaos` runs the one CHAOS_PROFILE names."""
    await billing_under_fire(infra, REDUCED, chosen_seed())


@pytest.mark.chaos
@pytest.mark.timeout(3600)
async def test_billing_under_fire(infra: Infra) -> None:
    """`make test-chaos`: CHAOS_PROFILE (reduced|full) and CHAOS_SEED from the environment."""
    await billing_under_fire(infra, chosen_profile(), chosen_seed())
