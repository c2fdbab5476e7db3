"""`tollgate provision`: JetStream streams and consumers from the one definition in contracts."""

from __future__ import annotations

import asyncio

import typer

from tollgate_cli.output import emit
from tollgate_platform import bus
from tollgate_platform.settings import ServiceSettings

app = typer.Typer(help="Create or update infrastructure that services bind to.")


@app.command("streams")
def streams(json_out: bool = typer.Option(False, "--json")) -> None:
    """Create or update every JetStream stream and durable consumer (idempotent)."""
    settings = ServiceSettings()

    async def run() -> list[str]:
        nc = await bus.connect(settings.nats_url, "tollgate-provision")
        try:
            return await bus.provision(nc.jetstream(), replicas=settings.stream_replicas)
        finally:
            await nc.close()

    changes = asyncio.run(run())
    emit({"changes": changes}, json_out, "\n".join(changes))
