"""`tollgate tier`: a customer's tier, pinning, and the tier table, through the tier service's
admin API (TOLLGATE_TIER_URL, default http://127.0.0.1:8082; token TOLLGATE_ADMIN_TOKEN)."""

from __future__ import annotations

import os
from typing import Any

import httpx
import typer

from tollgate_cli.output import emit, fail

app = typer.Typer(help="Spend tiers: lifetime spend -> rate limits.", no_args_is_help=True)

DEFAULT_URL = "http://127.0.0.1:8082"


def _request(method: str, path: str, as_json: bool, body: Any = None) -> Any:
    base = os.environ.get("TOLLGATE_TIER_URL", DEFAULT_URL).rstrip("/")
    token = os.environ.get("TOLLGATE_ADMIN_TOKEN", "dev-admin-token")
    try:
        response = httpx.request(
            method, f"{base}{path}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=15
        )
    except httpx.HTTPError as exc:
        fail(f"tier service at {base} unreachable: {type(exc).__name__}", as_json)
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        fail(f"{response.status_code}: {message}", as_json)
    return response.json()


def _customer_line(c: dict[str, Any]) -> str:
    pin = f" (pinned; spend earns {c['earned_tier']})" if c["pinned"] else ""
    since = ""
    if c["first_payment_at"]:
        since = f" (first payment {c['first_payment_at']}, {c['account_age_days']} days ago)"
    lines = [
        f"{c['customer_id']}: {c['tier']}{pin}",
        f"  limits          {c['limits']['rpm']} RPM, {c['limits']['tpm']:,} TPM",
        f"  lifetime spend  {c['lifetime_spend_usd']}{since}",
    ]
    nxt = c.get("next_tier")
    if nxt:
        age = f" and {nxt['days_to_go']} more day(s) of account age" if nxt["days_to_go"] else ""
        lines.append(f"  next tier       {nxt['tier']}: {nxt['spend_to_go_usd']} more spend{age}")
    elif not c["pinned"]:
        lines.append("  next tier       none (top tier)")
    return "\n".join(lines)


@app.command("show")
def show(customer_id: str, json_out: bool = typer.Option(False, "--json")) -> None:
    """A customer's tier, limits, lifetime spend and what unlocks the next tier."""
    data = _request("GET", f"/admin/v1/tiers/{customer_id}", json_out)
    emit(data, json_out, _customer_line(data))


@app.command("pin")
def pin(
    customer_id: str,
    tier: str | None = typer.Argument(None, help="Tier name to pin to (see `tollgate tier table`)."),
    unpin: bool = typer.Option(False, "--unpin", help="Remove the pin; spend decides again."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Pin a customer to a tier (payments and refunds no longer move it), or --unpin."""
    if unpin == (tier is not None):
        fail("give either a tier name or --unpin", json_out, code=2)
    data = _request("PUT", f"/admin/v1/tiers/{customer_id}/pin", json_out, {"tier": None if unpin else tier})
    emit(data, json_out, _customer_line(data))


@app.command("table")
def table(json_out: bool = typer.Option(False, "--json")) -> None:
    """The tier table in force."""
    data = _request("GET", "/admin/v1/tiers", json_out)
    rows = [f"preset {data['preset']}", f"{'tier':<10} {'min spend':>12} {'min age':>8} {'RPM':>8} {'TPM':>12}"]
    for t in data["tiers"]:
        age = f"{t['min_account_age_days']}d"
        rows.append(f"{t['name']:<10} {t['min_spend_usd']:>12} {age:>8} {t['rpm']:>8,} {t['tpm']:>12,}")
    emit(data, json_out, "\n".join(rows))
