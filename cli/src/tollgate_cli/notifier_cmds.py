"""`tollgate notifier`: the delivery log and per-customer alert preferences, through the
notifier's admin API (NOTIFIER_URL, default http://127.0.0.1:8084; TOLLGATE_ADMIN_TOKEN)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import typer

from tollgate_cli.output import emit, fail
from tollgate_money.units import usd_to_nanos
from tollgate_platform.settings import ServiceSettings

app = typer.Typer(help="Alert deliveries and notification preferences.", no_args_is_help=True)
prefs_app = typer.Typer(help="Per-customer alert preferences.", no_args_is_help=True)
app.add_typer(prefs_app, name="prefs")

URL_OPTION = typer.Option("http://127.0.0.1:8084", "--url", envvar="NOTIFIER_URL", help="Notifier base URL.")
JSON_OPTION = typer.Option(False, "--json", help="Print JSON.")


def _request(url: str, method: str, path: str, as_json: bool, **kwargs: Any) -> Any:
    token = ServiceSettings().admin_token.get_secret_value()
    try:
        response = httpx.request(
            method, f"{url.rstrip('/')}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10, **kwargs
        )
    except httpx.HTTPError as exc:
        fail(f"cannot reach the notifier at {url}: {type(exc).__name__}", as_json)
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        fail(f"HTTP {response.status_code}: {message}", as_json)
    return response.json()


def _delivery_line(d: dict[str, Any]) -> str:
    when = (d["sent_at"] or d["created_at"])[:19].replace("T", " ")
    who = d["customer_id"] or "(operator)"
    line = f"{d['id']:>6}  {when}  {d['status']:<8} {d['channel']:<7} {d['kind']:<17} {who:<20} " \
           f"attempts={d['attempts']}  {d['target'] or '-'}"
    if d["last_error"]:
        line += f"\n        last error: {d['last_error']}"
    return line


@app.command("deliveries")
def deliveries(
    customer: str | None = typer.Option(None, "--customer", help="Only this customer's deliveries."),
    status: str | None = typer.Option(None, "--status", help="pending, sent, failed or skipped."),
    channel: str | None = typer.Option(None, "--channel", help="email, slack or webhook."),
    kind: str | None = typer.Option(None, "--kind", help="Alert kind, e.g. balance.low."),
    limit: int = typer.Option(50, "--limit", min=1, max=500),
    url: str = URL_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """The delivery log, newest first, with every attempt."""
    params = {k: v for k, v in {"customer_id": customer, "status": status, "channel": channel, "kind": kind,
                                "limit": limit}.items() if v is not None}
    body = _request(url, "GET", "/admin/v1/deliveries", json_out, params=params)
    rows = body["data"]
    human = "\n".join(_delivery_line(d) for d in rows) if rows else "no deliveries"
    emit(body, json_out, human)


def _prefs_human(p: dict[str, Any]) -> str:
    threshold = p["low_balance_threshold"]
    if threshold is None:
        shown = "ledger default"
    elif threshold["type"] == "absolute":
        shown = threshold["display"]
    else:
        shown = f"{threshold['percent']}% of last top-up"
    return "\n".join([
        f"customer:        {p['customer_id']}{'' if p['stored'] else ' (defaults, nothing stored)'}",
        f"channels:        {', '.join(p['channels']) or 'none'}",
        f"email:           {p['email'] or '-'} (sends to: {p['effective_email'] or 'nobody'})",
        f"slack:           {'default webhook' if p['slack_uses_default'] else p['slack_webhook_url']}",
        f"webhook:         {p['webhook_url'] or '-'}{' (secret set)' if p['webhook_secret_set'] else ''}",
        f"low balance at:  {shown}",
    ])


@prefs_app.command("show")
def prefs_show(customer: str = typer.Argument(...), url: str = URL_OPTION, json_out: bool = JSON_OPTION) -> None:
    """Show a customer's alert preferences (secrets are never shown)."""
    body = _request(url, "GET", f"/admin/v1/preferences/{customer}", json_out)
    emit(body, json_out, _prefs_human(body))


@prefs_app.command("set")
def prefs_set(
    customer: str = typer.Argument(...),
    channels: str | None = typer.Option(None, "--channels", help="Comma list: email,slack,webhook."),
    email: str | None = typer.Option(None, "--email"),
    slack_url: str | None = typer.Option(None, "--slack-url", help="Slack incoming webhook URL ('' = default)."),
    webhook_url: str | None = typer.Option(None, "--webhook-url", help="Generic webhook URL ('' = none)."),
    webhook_secret: str | None = typer.Option(None, "--webhook-secret", envvar="NOTIFIER_WEBHOOK_SECRET",
                                              help="whsec_ secret (prefer the env var)."),
    threshold_usd: str | None = typer.Option(None, "--threshold-usd", help="Low-balance alert below this many USD."),
    threshold_percent: str | None = typer.Option(None, "--threshold-percent",
                                                 help="Low-balance alert below this % of the last top-up."),
    url: str = URL_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Change a customer's preferences; options left out keep their value."""
    change: dict[str, Any] = {}
    if channels is not None:
        change["channels"] = [c.strip() for c in channels.split(",") if c.strip()]
    if email is not None:
        change["email"] = email or None
    if slack_url is not None:
        change["slack_webhook_url"] = slack_url or None
    if webhook_url is not None:
        change["webhook_url"] = webhook_url or None
    if webhook_secret is not None:
        change["webhook_secret"] = webhook_secret or None
    if threshold_usd is not None and threshold_percent is not None:
        fail("give --threshold-usd or --threshold-percent, not both", json_out)
    try:
        if threshold_usd is not None:
            change["low_balance_threshold_nanos"] = usd_to_nanos(Decimal(threshold_usd))
        if threshold_percent is not None:
            change["low_balance_threshold_percent"] = str(Decimal(threshold_percent))
    except (InvalidOperation, ValueError) as exc:
        fail(f"invalid threshold: {exc}", json_out)
    if not change:
        fail("nothing to change (see --help)", json_out)
    body = _request(url, "PUT", f"/admin/v1/preferences/{customer}", json_out, json=change)
    emit(body, json_out, _prefs_human(body))
