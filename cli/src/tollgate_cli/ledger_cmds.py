"""`tollgate customers|keys|credits|ledger|drift|subscriptions|members`: the ledger's admin API from the command line
(TOLLGATE_LEDGER_URL, default http://127.0.0.1:8081; token TOLLGATE_ADMIN_TOKEN). Every command
prints JSON with --json."""

from __future__ import annotations

import os
import uuid
from typing import Annotated, Any, NoReturn

import httpx
import typer

from tollgate_cli.output import emit, fail
from tollgate_money import format_usd

DEFAULT_URL = "http://127.0.0.1:8081"

customers = typer.Typer(help="Customers (each mapped to a Dodo customer).", no_args_is_help=True)
keys = typer.Typer(help="API keys: issue (shown once), list, revoke.", no_args_is_help=True)
credits = typer.Typer(help="Prepaid credits: checkout links, grants, adjustments, balance.", no_args_is_help=True)
ledger = typer.Typer(help="The append-only ledger and the hot state.", no_args_is_help=True)
drift = typer.Typer(help="Reconciliation with Dodo's credit balances.", no_args_is_help=True)
subscriptions = typer.Typer(help="Plans: Plus/Team checkout, seats, cancellation, operator overrides.",
                            no_args_is_help=True)
members = typer.Typer(help="Team members and their keys (one paid seat each).", no_args_is_help=True)

GROUPS: dict[str, typer.Typer] = {
    "customers": customers,
    "keys": keys,
    "credits": credits,
    "ledger": ledger,
    "drift": drift,
    "subscriptions": subscriptions,
    "members": members,
}

JSON = typer.Option(False, "--json", help="Print the API's JSON answer.")


def _fail(message: str, as_json: bool, code: int = 1) -> NoReturn:
    fail(message, as_json, code)
    raise AssertionError("unreachable")


def _request(method: str, path: str, as_json: bool, body: Any = None, params: dict[str, Any] | None = None) -> Any:
    base = os.environ.get("TOLLGATE_LEDGER_URL", DEFAULT_URL).rstrip("/")
    token = os.environ.get("TOLLGATE_ADMIN_TOKEN", "dev-admin-token")
    try:
        response = httpx.request(
            method, f"{base}/admin/v1{path}", json=body, timeout=30,
            params={k: v for k, v in (params or {}).items() if v is not None},
            headers={"Authorization": f"Bearer {token}"},
        )
    except httpx.HTTPError as exc:
        _fail(f"ledger at {base} unreachable: {type(exc).__name__}", as_json)
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        _fail(f"{response.status_code}: {message}", as_json)
    return response.json()


def _usd(nanos: int | None) -> str:
    return "-" if nanos is None else format_usd(nanos)


def _nanos(nanos: int) -> str:
    return f"{_usd(nanos)} ({nanos:,} nanos)"


# -- customers ---------------------------------------------------------------------------------

def _customer_line(c: dict[str, Any]) -> str:
    return f"{c['customer_id']}  {c['email']}  {c['name']}  dodo={c['dodo_customer_id'] or '-'}"


@customers.command("create")
def customers_create(
    email: str = typer.Option(..., help="The customer's email (Dodo matches customers by email)."),
    name: str = typer.Option(..., help="Display name."),
    dodo_customer_id: str | None = typer.Option(None, help="Link an existing Dodo customer instead."),
    no_dodo: bool = typer.Option(False, "--no-dodo", help="Do not create the Dodo customer now."),
    json_out: bool = JSON,
) -> None:
    """Create a customer (and its Dodo customer when Dodo is reachable)."""
    data = _request("POST", "/customers", json_out, {
        "email": email, "name": name, "dodo_customer_id": dodo_customer_id, "create_in_dodo": not no_dodo,
    })
    emit(data, json_out, _customer_line(data))


@customers.command("list")
def customers_list(
    limit: int = typer.Option(100, min=1, max=500), after: str | None = typer.Option(None, help="Page after this id."),
    email: str | None = None, json_out: bool = JSON,
) -> None:
    """List customers, by id."""
    data = _request("GET", "/customers", json_out, params={"limit": limit, "after": after, "email": email})
    lines = [_customer_line(c) for c in data["data"]] or ["(no customers)"]
    if data["next_after"]:
        lines.append(f"... more: --after {data['next_after']}")
    emit(data, json_out, "\n".join(lines))


@customers.command("show")
def customers_show(customer_id: str, json_out: bool = JSON) -> None:
    """A customer with its balance."""
    customer = _request("GET", f"/customers/{customer_id}", json_out)
    balance = _request("GET", f"/customers/{customer_id}/balance", json_out)
    data = {**customer, "balance": balance}
    emit(data, json_out, _customer_line(customer) + "\n" + _balance_text(balance))


# -- keys --------------------------------------------------------------------------------------

@keys.command("issue")
def keys_issue(
    customer_id: str, name: str = typer.Option("", help="A label for the key."),
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Allow only this model (repeatable); default all.")
    ] = None,
    json_out: bool = JSON,
) -> None:
    """Issue a key. The plaintext is printed once and never stored."""
    data = _request("POST", f"/customers/{customer_id}/keys", json_out, {"name": name, "models": model or None})
    emit(data, json_out, f"{data['key']}\n(key {data['key_id']}; store it now, it is not shown again)")


@keys.command("list")
def keys_list(customer_id: str, json_out: bool = JSON) -> None:
    """A customer's keys (prefix only)."""
    data = _request("GET", f"/customers/{customer_id}/keys", json_out)
    lines = [
        f"{k['key_id']}  {k['prefix']}...  {k['status']:<8} {k['name'] or '-'}  models={k['models'] or 'all'}  "
        f"last used {k['last_used_at'] or 'never'}"
        for k in data
    ]
    emit(data, json_out, "\n".join(lines) or "(no keys)")


@keys.command("revoke")
def keys_revoke(key_id: str, json_out: bool = JSON) -> None:
    """Revoke a key; every gateway replica stops accepting it at once."""
    data = _request("POST", f"/keys/{key_id}/revoke", json_out)
    emit(data, json_out, f"{data['key_id']} revoked at {data['revoked_at']}")


# -- credits -----------------------------------------------------------------------------------

def _balance_text(b: dict[str, Any]) -> str:
    lines = [
        f"balance        {_nanos(b['balance_nanos'])}  (ledger seq {b['seq']})",
        f"status         {b['status']}; alert state {b['alert_state']}",
        f"low threshold  {_usd(b['low_threshold_nanos'])}"
        f"{'' if b['low_threshold_explicit'] else ' (default share of last top-up)'}",
        f"last top-up    {_usd(b['last_topup_nanos'])} at {b['last_topup_at'] or '-'}",
    ]
    hot = b.get("hot")
    if hot:
        lines.append(
            f"hot copy       available {_usd(hot['available_nanos'])} = {_usd(hot['balance_nanos'])} "
            f"- reserved {_usd(hot['reserved_nanos'])} - unposted {_usd(hot['unposted_nanos'])}"
        )
    else:
        lines.append("hot copy       not loaded")
    return "\n".join(lines)


@credits.command("balance")
def credits_balance(customer_id: str, json_out: bool = JSON) -> None:
    """Balance, in-flight reservations and unposted usage, low-balance threshold."""
    data = _request("GET", f"/customers/{customer_id}/balance", json_out)
    emit(data, json_out, _balance_text(data))


@credits.command("checkout")
def credits_checkout(
    customer_id: str, pack: str = typer.Option(..., help="Pack product id or name."),
    quantity: int = typer.Option(1, min=1, max=100), json_out: bool = JSON,
) -> None:
    """A Dodo checkout link that tops the customer up with a credit pack."""
    data = _request("POST", f"/customers/{customer_id}/checkout", json_out, {"pack": pack, "quantity": quantity})
    emit(data, json_out, f"{data['checkout_url']}\n({data['credits']} credits; session {data['session_id']})")


def _movement_text(data: dict[str, Any]) -> str:
    entry = data["entry"]
    done = "applied" if data["created"] else "already applied earlier (same idempotency key)"
    return (f"{entry['kind']} {_nanos(entry['amount_nanos'])}: {done}\n"
            f"balance now {_nanos(data['balance_nanos'])} (key {entry['idempotency_key']})")


@credits.command("grant")
def credits_grant(
    customer_id: str,
    cents: int = typer.Option(..., min=1, help="Credits to grant (1 credit = 1 cent)."),
    reason: str = typer.Option(..., help="Why (kept on the entry)."),
    idempotency_key: str | None = typer.Option(None, help="Re-use to retry safely; default: a new one."),
    json_out: bool = JSON,
) -> None:
    """Grant credits (also credited on the customer's Dodo entitlement)."""
    key = idempotency_key or f"cli-{uuid.uuid4().hex}"
    data = _request("POST", f"/customers/{customer_id}/grants", json_out,
                    {"amount_cents": cents, "reason": reason, "idempotency_key": key})
    emit(data, json_out, _movement_text(data))


@credits.command("adjust")
def credits_adjust(
    customer_id: str,
    nanos: int = typer.Option(..., help="Signed amount in nano-dollars (10^-9 USD)."),
    reason: str = typer.Option(..., help="Why (kept on the entry)."),
    idempotency_key: str = typer.Option(..., help="Required: an adjustment must never apply twice."),
    sync_to_dodo: bool = typer.Option(False, help="Also move Dodo's credit balance."),
    json_out: bool = JSON,
) -> None:
    """Correct a balance with an explicit, reasoned adjustment entry."""
    data = _request("POST", f"/customers/{customer_id}/adjustments", json_out, {
        "amount_nanos": nanos, "reason": reason, "idempotency_key": idempotency_key, "sync_to_dodo": sync_to_dodo,
    })
    emit(data, json_out, _movement_text(data))


@credits.command("threshold")
def credits_threshold(
    customer_id: str,
    cents: int | None = typer.Option(None, min=0, help="Alert below this many cents."),
    default: bool = typer.Option(False, "--default", help="Back to the default share of the last top-up."),
    json_out: bool = JSON,
) -> None:
    """Set the low-balance alert threshold."""
    if default == (cents is not None):
        _fail("give either --cents or --default", json_out, code=2)
    threshold = None if default else int(cents or 0) * 10_000_000
    data = _request("PUT", f"/customers/{customer_id}/low-threshold", json_out, {"threshold_nanos": threshold})
    emit(data, json_out, _balance_text(data))


# -- ledger ------------------------------------------------------------------------------------

@ledger.command("history")
def ledger_history(
    customer_id: str, limit: int = typer.Option(50, min=1, max=1000),
    before_seq: int | None = typer.Option(None, help="Older than this entry (paging)."), json_out: bool = JSON,
) -> None:
    """Ledger entries, newest first."""
    data = _request("GET", f"/customers/{customer_id}/entries", json_out,
                    params={"limit": limit, "before_seq": before_seq})
    lines = []
    for e in data["data"]:
        what = e["reason"] or e["reference"] or ""
        if e["kind"] == "usage":
            what = f"{e['model']} {e['input_tokens']}+{e['output_tokens']} tokens ({e['reference']})"
        lines.append(f"#{e['seq']:<6} {e['created_at']}  {e['kind']:<10} {e['amount_nanos']:>16,}  "
                     f"-> {e['balance_after']:>16,}  {what}")
    if data["next_before_seq"]:
        lines.append(f"... more: --before-seq {data['next_before_seq']}")
    emit(data, json_out, "\n".join(lines) or "(no entries)")


@ledger.command("rebuild-hot-state")
def ledger_rebuild(
    customer_id: str | None = typer.Option(None, "--customer", help="Only this customer."), json_out: bool = JSON,
) -> None:
    """Re-mirror balances and keys from Postgres into Redis (never changes a balance)."""
    data = _request("POST", "/hotstate/rebuild", json_out, {"customer_id": customer_id})
    emit(data, json_out, f"{data['customers']} customer(s) mirrored, {data['keys_written']} key(s) cached, "
                         f"{data['keys_dropped']} revoked key(s) dropped")


@ledger.command("inbox")
def ledger_inbox(
    outcome: str | None = typer.Option(None, help="applied, duplicate, parked, ignored, unmatched, rejected"),
    limit: int = typer.Option(50, min=1, max=500), json_out: bool = JSON,
) -> None:
    """The Dodo webhook inbox, newest first."""
    data = _request("GET", "/webhooks", json_out, params={"outcome": outcome, "limit": limit})
    lines = [f"{w['received_at']}  {w['webhook_id']}  {w['type']:<22} {w['outcome']:<9} "
             f"{w['customer_id'] or '-'}  {w['detail'] or ''}" for w in data]
    emit(data, json_out, "\n".join(lines) or "(empty)")


@ledger.command("reapply")
def ledger_reapply(webhook_id: str, json_out: bool = JSON) -> None:
    """Apply a stored webhook that was not applied (unmatched customer, parked, rejected) again."""
    data = _request("POST", f"/webhooks/{webhook_id}/reapply", json_out)
    emit(data, json_out, f"{data['webhook_id']}: {data['status']}")


# -- drift -------------------------------------------------------------------------------------

def _drift_line(d: dict[str, Any]) -> str:
    return (f"{d['customer_id']}  {d['status']:<8} drift {_usd(d['drift_nanos'])}  tollgate {_usd(d['tollgate_nanos'])}"
            f"  in flight {_usd(d['in_flight_nanos'])}  dodo {_usd(d['dodo_nanos'])}  {d.get('checked_at') or ''}")


@drift.command("show")
def drift_show(
    customer_id: str | None = typer.Argument(None, help="One customer's check history; default: all drifting."),
    json_out: bool = JSON,
) -> None:
    """Customers whose balance disagrees with Dodo's (or one customer's history)."""
    path = f"/customers/{customer_id}/drift" if customer_id else "/drift"
    data = _request("GET", path, json_out)
    emit(data, json_out, "\n".join(_drift_line(d) for d in data) or "no drift")


@drift.command("check")
def drift_check(customer_id: str, json_out: bool = JSON) -> None:
    """Reconcile one customer with Dodo now."""
    data = _request("POST", f"/customers/{customer_id}/reconcile", json_out)
    emit(data, json_out, _drift_line(data))


# -- subscriptions -----------------------------------------------------------------------------

def _plan_text(p: dict[str, Any]) -> str:
    plan = p["plan"] or "none (credits only)"
    lines = [f"plan           {plan}  ({p['status']}, source {p['source']}, version {p['plan_v']})"]
    sub = p.get("subscription")
    if sub:
        lines.append(f"subscription   {sub['subscription_id']}  {sub['plan']} {sub['status']}"
                     f"{'  cancels at period end' if sub['cancel_at_period_end'] else ''}")
    if p["period_start"]:
        lines.append(f"period         {p['period_start']} -> {p['period_end'] or '-'}")
    if p["plan"] in ("team", "enterprise"):
        lines.append(f"seats          {p['members']} of {p['seats']} taken")
    if p["cap_nanos"] is not None:
        reached = "  (soft cap reached: fallback models serve)" if p["softcap_reached"] else ""
        lines.append(f"usage          {_usd(p['used_nanos'])} of {_usd(p['cap_nanos'])} this period{reached}")
    if p["daily_cap_nanos"] is not None:
        lines.append(f"free today     {_usd(p['daily_used_nanos'])} of {_usd(p['daily_cap_nanos'])}")
    if p["models"]:
        lines.append(f"models         {', '.join(p['models'])}")
    if p["fallback"]:
        lines.append("past the cap   " + ", ".join(f"{a} -> {b}" for a, b in p["fallback"].items()))
    return "\n".join(lines)


@subscriptions.command("checkout")
def subscriptions_checkout(
    customer_id: str, plan: str = typer.Option(..., help="plus or team."),
    seats: int = typer.Option(1, min=1, max=1000, help="Team only: seats to buy."), json_out: bool = JSON,
) -> None:
    """A Dodo checkout link for Plus or Team."""
    data = _request("POST", f"/customers/{customer_id}/subscriptions/checkout", json_out,
                    {"plan": plan, "seats": seats})
    emit(data, json_out, f"{data['checkout_url']}\n({data['plan']}, {data['seats']} seat(s), "
                         f"${data['monthly_cents'] / 100:.2f}/month; session {data['session_id']})")


@subscriptions.command("show")
def subscriptions_show(customer_id: str, json_out: bool = JSON) -> None:
    """The customer's plan, subscription, seats and usage this period."""
    data = _request("GET", f"/customers/{customer_id}/subscription", json_out)
    emit(data, json_out, _plan_text(data))


@subscriptions.command("seats")
def subscriptions_seats(customer_id: str, seats: int = typer.Argument(..., min=1), json_out: bool = JSON) -> None:
    """Change a Team's paid seats (applies when Dodo confirms the plan change)."""
    data = _request("POST", f"/customers/{customer_id}/subscription/seats", json_out, {"seats": seats})
    emit(data, json_out, f"{data['subscription_id']}: {data['status']} ({data['seats']} -> {data['requested_seats']} "
                         "seats; applied when Dodo's plan_changed webhook arrives)")


@subscriptions.command("cancel")
def subscriptions_cancel(
    customer_id: str, now: bool = typer.Option(False, "--now", help="End the plan now, not at the period end."),
    json_out: bool = JSON,
) -> None:
    """Cancel the subscription (by default at the end of the period)."""
    data = _request("POST", f"/customers/{customer_id}/subscription/cancel", json_out, {"at_period_end": not now})
    when = f"at the period end ({data['plan_ends_at']})" if data["at_period_end"] else "now"
    emit(data, json_out, f"{data['subscription_id']}: cancellation requested, the plan ends {when}")


@subscriptions.command("set-plan")
def subscriptions_set_plan(
    customer_id: str,
    plan: str | None = typer.Option(None, help="enterprise, free, a price-book plan, or '' for credits only."),
    seats: int | None = typer.Option(None, min=1, help="Seats (members) the override allows."),
    clear: bool = typer.Option(False, "--clear", help="Remove the override: follow Dodo subscriptions again."),
    json_out: bool = JSON,
) -> None:
    """Set an operator's plan override (e.g. an invoiced Enterprise contract)."""
    if clear == (plan is not None):
        _fail("give either --plan or --clear", json_out, code=2)
    data = _request("PUT", f"/customers/{customer_id}/plan", json_out, {"plan": None if clear else plan,
                                                                        "seats": seats})
    emit(data, json_out, _plan_text(data))


# -- members -----------------------------------------------------------------------------------

def _member_line(m: dict[str, Any]) -> str:
    keys_part = f"  {m['active_keys']} key(s)" if m.get("active_keys") is not None else ""
    return f"{m['member_id']}  {m['email']}  {m['name'] or '-'}  {m['status']}{keys_part}"


@members.command("add")
def members_add(
    customer_id: str, email: str = typer.Option(...), name: str = typer.Option(""), json_out: bool = JSON,
) -> None:
    """Add a member to a team (refused when every paid seat is taken)."""
    data = _request("POST", f"/customers/{customer_id}/members", json_out, {"email": email, "name": name})
    emit(data, json_out, _member_line(data))


@members.command("list")
def members_list(
    customer_id: str, include_removed: bool = typer.Option(False, "--all", help="Also removed members."),
    json_out: bool = JSON,
) -> None:
    """A team's members."""
    data = _request("GET", f"/customers/{customer_id}/members", json_out,
                    params={"include_removed": str(include_removed).lower()})
    emit(data, json_out, "\n".join(_member_line(m) for m in data) or "(no members)")


@members.command("remove")
def members_remove(customer_id: str, member_id: str, json_out: bool = JSON) -> None:
    """Remove a member: frees the seat and revokes their keys everywhere at once."""
    data = _request("DELETE", f"/customers/{customer_id}/members/{member_id}", json_out)
    emit(data, json_out, f"{data['member_id']} removed; revoked keys: {', '.join(data['revoked_key_ids']) or 'none'}")


@members.command("key")
def members_key(
    customer_id: str, member_id: str, name: str = typer.Option("", help="A label for the key."),
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Allow only this model (repeatable); default all.")
    ] = None,
    json_out: bool = JSON,
) -> None:
    """Issue a key to a member (their usage counts against the team's plan). Shown once."""
    data = _request("POST", f"/customers/{customer_id}/members/{member_id}/keys", json_out,
                    {"name": name, "models": model or None})
    emit(data, json_out, f"{data['key']}\n(key {data['key_id']} for {member_id}; store it now, it is not shown again)")
