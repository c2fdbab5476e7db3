"""The operator's pages (admin credential): customers, a customer's ledger, metering lag and dead
letters (with replay), reconciliation drift over time, and the webhook inbox. Reads reuse the
admin API's operations wherever one exists."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from tollgate_ledger import operations
from tollgate_ledger.admin import get_ledger
from tollgate_ledger.console import ops_data, pipeline
from tollgate_ledger.console.charts import line_chart
from tollgate_ledger.console.formatting import compact_usd
from tollgate_ledger.console.pages import PREFIX, ConsoleRoute, PageError, not_found
from tollgate_ledger.console.runtime import Console
from tollgate_ledger.errors import ApiError
from tollgate_platform.logging import get_logger

log = get_logger(__name__)

WEBHOOK_OUTCOMES = ("applied", "duplicate", "parked", "ignored", "unmatched", "rejected", "received")
DRIFT_WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}


def ops_router(console: Console) -> APIRouter:
    router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

    @router.get("")
    async def customers(request: Request, after: str | None = None, q: str | None = None) -> Response:
        console.operator(request)
        ledger = get_ledger(request)
        query = (q or "").strip()[:200] or None
        rows = await ops_data.customers(ledger.pool, after=after, query=query, limit=console.settings.page_size)
        more = rows[-1]["customer_id"] if len(rows) == console.settings.page_size else None
        return console.render(request, "ops_customers.html", title="Customers", rows=rows, q=query or "", more=more)

    @router.get("/customers/{customer_id}")
    async def customer(
        request: Request, customer_id: str, before_seq: Annotated[int | None, Query(ge=1)] = None
    ) -> Response:
        console.operator(request)
        ledger = get_ledger(request)
        limit = console.settings.page_size
        try:
            info = await operations.get_customer(ledger, customer_id)
        except ApiError as exc:
            raise not_found("customer") from exc
        balance, entries, drift, keys = await asyncio.gather(
            operations.balance(ledger, customer_id),
            operations.history(ledger, customer_id, limit=limit, before_seq=before_seq),
            operations.drift_history(ledger, customer_id, 10),
            operations.list_keys(ledger, customer_id),
        )
        tiers = await ops_data.tiers_of(ledger.pool, [customer_id])
        older = entries[-1]["seq"] if len(entries) == limit and entries[-1]["seq"] > 1 else None
        return console.render(
            request, "ops_customer.html", title=info["name"], info=info, balance=balance, entries=entries,
            drift=drift, keys=keys, tier=tiers.get(customer_id), older=older, paged=before_seq is not None,
        )

    @router.get("/pipeline")
    async def pipeline_page(request: Request, before: Annotated[int | None, Query(ge=1)] = None) -> Response:
        console.operator(request)
        ledger = get_ledger(request)
        lags: list[pipeline.ConsumerLag] | None = None
        page: pipeline.LetterPage | None = None
        problem = None
        if ledger.nc is None or not ledger.nc.is_connected:
            problem = "NATS is not connected; lag and dead letters cannot be read right now."
        else:
            try:
                lags, page = await asyncio.gather(
                    pipeline.consumer_lag(ledger.js),
                    pipeline.dead_letters(ledger.js, limit=console.settings.page_size, before=before),
                )
            except Exception as exc:  # JetStream trouble is shown on the page, not as a 500
                log.warning("pipeline state unavailable", error=type(exc).__name__)
                problem = f"JetStream did not answer ({type(exc).__name__})."
        return console.render(
            request, "ops_pipeline.html", title="Metering & dead letters", lags=lags, page=page, problem=problem,
            paged=before is not None,
        )

    @router.post("/dead-letters/{seq}/replay")
    async def replay(request: Request, seq: int) -> Response:
        console.operator(request)
        await console.form(request)
        ledger = get_ledger(request)
        back = f"{PREFIX}/ops/pipeline"
        if ledger.nc is None or not ledger.nc.is_connected:
            return console.redirect(request, back, ("error", "NATS is not connected; nothing was replayed."))
        letter = await pipeline.get_letter(ledger.js, seq)
        if letter is None or letter.letter is None:
            raise not_found("dead letter")
        try:
            duplicate = await pipeline.replay(ledger.js, letter)
        except Exception as exc:
            log.warning("replay failed", seq=seq, error=type(exc).__name__)
            return console.redirect(
                request, back, ("error", f"Dead letter {seq} was not replayed ({type(exc).__name__}).")
            )
        log.info("dead letter replayed from the console", seq=seq, subject=letter.letter.original_subject,
                 duplicate=duplicate)
        if duplicate:
            return console.redirect(request, back, ("info", f"Dead letter {seq} had already been replayed."))
        return console.redirect(
            request, back, ("ok", f"Dead letter {seq} replayed to {letter.letter.original_subject}.")
        )

    @router.get("/drift")
    async def drift(request: Request, window: str = "7d") -> Response:
        console.operator(request)
        ledger = get_ledger(request)
        if window not in DRIFT_WINDOWS:
            raise PageError(400, "Bad request", "Unknown time window.")
        until = datetime.now(UTC)
        since = until - DRIFT_WINDOWS[window]
        lines, drifting, checks = await asyncio.gather(
            ops_data.drift_lines(ledger.pool, since, until),
            operations.drifting(ledger),
            ops_data.recent_checks(ledger.pool, console.settings.page_size),
        )
        chart = line_chart(
            "drift-chart", f"Drift (Dodo minus Tollgate) per customer, last {window}", lines, compact_usd,
            start=since, end=until, empty_text="No drift recorded in this window",
        )
        return console.render(
            request, "ops_drift.html", title="Drift", chart=chart, drifting=drifting, checks=checks, window=window,
            windows=list(DRIFT_WINDOWS),
        )

    @router.get("/webhooks")
    async def webhooks(request: Request, outcome: str | None = None) -> Response:
        console.operator(request)
        ledger = get_ledger(request)
        chosen = outcome if outcome in WEBHOOK_OUTCOMES else None
        rows, counts = await asyncio.gather(
            operations.inbox(ledger, outcome=chosen, limit=console.settings.page_size),
            ops_data.webhook_outcomes(ledger.pool),
        )
        return console.render(
            request, "ops_webhooks.html", title="Webhooks", rows=rows, counts=counts, outcome=chosen or "",
            outcomes=WEBHOOK_OUTCOMES,
        )

    return router
