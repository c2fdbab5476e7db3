"""`tollgate dodo ...`: provision the Dodo catalogue (emulator or real Dodo, by configuration only)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from dodopayments import APIError
from pydantic import ValidationError

from tollgate_cli.output import emit, fail
from tollgate_dodo.bootstrap import BootstrapReport, BootstrapSettings, bootstrap
from tollgate_dodo.catalogue import Catalogue
from tollgate_dodo.client import create_client
from tollgate_money import PriceBook

app = typer.Typer(help="Dodo Payments: bootstrap the catalogue, show what was provisioned.", no_args_is_help=True)
CatalogueFile = Annotated[Path | None, typer.Option("--catalogue-file", help="default: TOLLGATE_DODO_CATALOGUE_FILE")]
JsonOut = Annotated[bool, typer.Option("--json")]


def _settings(overrides: dict[str, Any]) -> BootstrapSettings:
    return BootstrapSettings(**{k: v for k, v in overrides.items() if v is not None})


@app.command("bootstrap")
def bootstrap_cmd(
    strategy: Annotated[
        str | None,
        typer.Option(
            "--strategy", help="weighted | per_model_meters | token_meters (default: TOLLGATE_DODO_METER_STRATEGY)"
        ),
    ] = None,
    ledger_url: Annotated[
        str | None, typer.Option("--ledger-url", help="public URL of the ledger (the webhook target)")
    ] = None,
    reference_model: Annotated[str | None, typer.Option("--reference-model")] = None,
    catalogue_file: CatalogueFile = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="do not write the catalogue file")] = False,
    json_out: JsonOut = False,
) -> None:
    """Create or find the credit entitlement, packs, meters, usage product(s), plans, seat add-on and
    the ledger's webhook endpoint; record their ids. A second run creates nothing."""
    try:
        settings = _settings({
            "meter_strategy": strategy, "ledger_public_url": ledger_url, "reference_model": reference_model,
            "dodo_catalogue_file": catalogue_file,
        })
    except ValidationError as exc:
        fail(f"invalid setting: {exc.errors(include_url=False)[0]['msg']}", json_out)
        return

    async def run() -> BootstrapReport:
        client = create_client(settings, max_retries=3)
        try:
            return await bootstrap(client, PriceBook.load(settings.pricing_file), settings, save=not dry_run)
        finally:
            await client.close()

    try:
        report = asyncio.run(run())
    except (APIError, ValueError) as exc:
        fail(f"bootstrap failed: {exc}", json_out)
        return
    data = report.as_dict() | {"catalogue_file": str(settings.dodo_catalogue_file), "written": not dry_run}
    lines = [f"created  {x}" for x in report.created] + [f"updated  {x}" for x in report.updated]
    lines += [f"found    {x}" for x in report.found] + [f"warning  {x}" for x in report.warnings]
    lines.append(
        f"{len(report.created)} created, {len(report.updated)} updated, {len(report.found)} found; "
        f"catalogue {'written to' if not dry_run else 'not written'} {settings.dodo_catalogue_file}"
    )
    emit(data, json_out, "\n".join(lines))


@app.command("show")
def show(catalogue_file: CatalogueFile = None, json_out: JsonOut = False) -> None:
    """Print the catalogue bootstrap recorded."""
    settings = _settings({"dodo_catalogue_file": catalogue_file})
    catalogue = Catalogue.load(settings.dodo_catalogue_file)
    if catalogue is None:
        fail(f"no catalogue at {settings.dodo_catalogue_file}; run `tollgate dodo bootstrap`", json_out)
        return
    emit(catalogue.model_dump(mode="json"), json_out)


@app.command("webhook-secret")
def webhook_secret(catalogue_file: CatalogueFile = None, json_out: JsonOut = False) -> None:
    """Print the signing secret of the ledger's webhook endpoint (for DODO_PAYMENTS_WEBHOOK_KEY).
    Printed on request only; nothing else in Tollgate ever logs it."""
    settings = _settings({"dodo_catalogue_file": catalogue_file})
    catalogue = Catalogue.load(settings.dodo_catalogue_file)
    if catalogue is None or not catalogue.webhook_endpoint_id:
        fail("no webhook endpoint recorded; run `tollgate dodo bootstrap`", json_out)
        return
    endpoint_id = catalogue.webhook_endpoint_id

    async def run() -> str:
        client = create_client(settings)
        try:
            return str((await client.webhooks.retrieve_secret(endpoint_id)).secret)
        finally:
            await client.close()

    secret = asyncio.run(run())
    emit({"webhook_endpoint_id": endpoint_id, "secret": secret}, json_out, secret)
