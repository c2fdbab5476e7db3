"""Credit entitlements: CRUD, balances, grants, ledger entries, and meter-driven deductions."""

from __future__ import annotations

from datetime import UTC, datetime

import dodopayments
import pytest
from dodo_emulator_kit import Receiver, World, run_emulator, wait_for


def test_entitlement_crud(world: World, client: dodopayments.DodoPayments) -> None:
    response = client.credit_entitlements.with_raw_response.create(
        name="Tokens", overage_enabled=False, precision=0, rollover_enabled=False, unit="tokens"
    )
    assert response.status_code == 201
    ce = response.parse()
    assert ce.id.startswith("cde_") and ce.overage_behavior == "forgive_at_reset"
    assert client.credit_entitlements.update(ce.id, name="LLM tokens", description="for chat") is None
    fetched = client.credit_entitlements.retrieve(ce.id)
    assert (fetched.name, fetched.description, fetched.precision) == ("LLM tokens", "for chat", 0)
    assert [c.id for c in client.credit_entitlements.list().items] == [ce.id]

    client.credit_entitlements.delete(ce.id)
    with pytest.raises(dodopayments.NotFoundError):
        client.credit_entitlements.retrieve(ce.id)
    assert [c.id for c in client.credit_entitlements.list(deleted=True).items] == [ce.id]
    client.credit_entitlements.undelete(ce.id)
    assert client.credit_entitlements.retrieve(ce.id).name == "LLM tokens"
    with pytest.raises(dodopayments.InternalServerError):  # Dodo answers 500 here, as its docs admit
        client.credit_entitlements.undelete(ce.id)


def test_entitlement_validation(client: dodopayments.DodoPayments) -> None:
    with pytest.raises(dodopayments.UnprocessableEntityError):
        client.credit_entitlements.create(name="x", overage_enabled=False, precision=11, rollover_enabled=False,
                                          unit="u")
    with pytest.raises(dodopayments.UnprocessableEntityError):  # overage needs a price per unit
        client.credit_entitlements.create(name="x", overage_enabled=True, precision=2, rollover_enabled=False,
                                          unit="u")


def test_manual_ledger_entries_and_idempotency(world: World, client: dodopayments.DodoPayments,
                                               receiver: Receiver) -> None:
    world.webhook(receiver.url)
    customer = world.customer()
    ce = world.entitlement()
    balances = client.credit_entitlements.balances
    raw = balances.with_raw_response.create_ledger_entry(
        customer.customer_id, credit_entitlement_id=ce.id, amount="12.5", entry_type="credit",
        idempotency_key="grant-1", reason="welcome bonus", metadata={"source": "signup"},
    )
    assert raw.status_code == 201
    credit = raw.parse()
    assert (credit.amount, credit.balance_before, credit.balance_after, credit.is_credit) == (
        "12.50", "0.00", "12.50", True)
    assert credit.entry_type == "credit" and credit.reason == "welcome bonus" and credit.grant_id

    with pytest.raises(dodopayments.ConflictError) as exc:
        balances.create_ledger_entry(customer.customer_id, credit_entitlement_id=ce.id, amount="12.5",
                                     entry_type="credit", idempotency_key="grant-1")
    assert isinstance(exc.value.body, dict) and exc.value.body["code"] == "IDEMPOTENCY_KEY_ALREADY_EXISTS"
    assert world.balance(ce.id, customer.customer_id) == "12.50"

    debit = balances.create_ledger_entry(customer.customer_id, credit_entitlement_id=ce.id, amount="2.25",
                                         entry_type="debit", idempotency_key="use-1")
    assert (debit.balance_after, debit.is_credit) == ("10.25", False)
    with pytest.raises(dodopayments.BadRequestError) as exc:
        balances.create_ledger_entry(customer.customer_id, credit_entitlement_id=ce.id, amount="10.26",
                                     entry_type="debit")
    assert isinstance(exc.value.body, dict) and exc.value.body["code"] == "INSUFFICIENT_CREDIT_BALANCE"
    with pytest.raises(dodopayments.BadRequestError):  # more decimals than the entitlement's precision
        balances.create_ledger_entry(customer.customer_id, credit_entitlement_id=ce.id, amount="0.001",
                                     entry_type="credit")

    ledger = balances.list_ledger(customer.customer_id, credit_entitlement_id=ce.id).items
    assert [(e.transaction_type, e.amount) for e in ledger] == [("manual_adjustment", "2.25"),
                                                                  ("manual_adjustment", "12.50")]
    assert ledger[1].metadata == {"source": "signup"}
    receiver.wait_type("credit.manual_adjustment", count=2)

    listed = balances.list(ce.id).items
    assert [(b.customer_id, b.balance) for b in listed] == [(customer.customer_id, "10.25")]


def test_grants_are_consumed_fifo(world: World, client: dodopayments.DodoPayments) -> None:
    customer = world.customer()
    ce = world.entitlement(precision=0)
    balances = client.credit_entitlements.balances
    for amount in ("5", "7"):
        balances.create_ledger_entry(customer.customer_id, credit_entitlement_id=ce.id, amount=amount,
                                     entry_type="credit")
    balances.create_ledger_entry(customer.customer_id, credit_entitlement_id=ce.id, amount="6", entry_type="debit")
    grants = balances.list_grants(customer.customer_id, credit_entitlement_id=ce.id).items  # newest first
    assert [(g.initial_amount, g.remaining_amount, g.source_type) for g in grants] == [("7", "6", "api"),
                                                                                       ("5", "0", "api")]
    assert len(balances.list_grants(customer.customer_id, credit_entitlement_id=ce.id, status="depleted").items) == 1
    assert len(balances.list_grants(customer.customer_id, credit_entitlement_id=ce.id, status="active").items) == 1


def test_meter_usage_deducts_exact_credits(world: World, client: dodopayments.DodoPayments,
                                           receiver: Receiver) -> None:
    world.webhook(receiver.url, filter_types=["credit.deducted"])
    customer = world.customer()
    ce = world.entitlement(precision=2)
    world.buy(world.topup(ce.id, credits="1").product_id, customer.customer_id)
    meter = world.meter()
    world.usage_product(meter.id, ce.id, units_per_credit="3")  # 3 micro-units buy one credit

    world.ingest(customer.customer_id, 1, 1, prefix="a")  # 2 units = 0.666.. credits
    assert world.deduct() == 1
    assert world.balance(ce.id, customer.customer_id) == "0.34"  # 0.66 taken, 0.02 units remain
    world.ingest(customer.customer_id, 1, prefix="b")  # 1 + 0.02 = 1.02 units -> 0.34 credits
    world.deduct()
    assert world.balance(ce.id, customer.customer_id) == "0.00"
    world.ingest(customer.customer_id, 0, prefix="c")
    assert world.deduct() == 0  # nothing new worth a credit quantum
    [first, second] = receiver.wait_type("credit.deducted", count=2)
    assert (first.json["data"]["amount"], second.json["data"]["amount"]) == ("0.66", "0.34")
    assert first.json["data"]["payload_type"] == "CreditLedgerEntry"


def test_usage_beyond_balance_becomes_overage(world: World, client: dodopayments.DodoPayments) -> None:
    customer = world.customer()
    ce = world.entitlement(precision=0)
    world.buy(world.topup(ce.id, credits="10").product_id, customer.customer_id)
    meter = world.meter(aggregation={"type": "count"})
    world.usage_product(meter.id, ce.id, units_per_credit="1")
    world.ingest(customer.customer_id, *([0] * 13))
    world.deduct()
    balance = client.credit_entitlements.balances.retrieve(customer.customer_id, credit_entitlement_id=ce.id)
    assert (balance.balance, balance.overage) == ("0", "3")
    [entry] = client.credit_entitlements.balances.list_ledger(
        customer.customer_id, credit_entitlement_id=ce.id, transaction_type="credit_deducted").items
    assert (entry.amount, entry.balance_after, entry.overage_after) == ("13", "0", "3")


def test_meter_filter_limits_what_is_deducted(world: World, client: dodopayments.DodoPayments) -> None:
    customer = world.customer()
    ce = world.entitlement(precision=0)
    world.buy(world.topup(ce.id, credits="100").product_id, customer.customer_id)
    meter = world.meter(aggregation={"type": "sum", "key": "tokens"},
                        filter={"conjunction": "and",
                                "clauses": [{"key": "model", "operator": "equals", "value": "gpt-4o"}]})
    world.usage_product(meter.id, ce.id, units_per_credit="10")
    now = datetime.now(UTC)
    client.usage_events.ingest(events=[
        {"event_id": "x1", "customer_id": customer.customer_id, "event_name": "llm.usage", "timestamp": now,
         "metadata": {"model": "gpt-4o", "tokens": 250}},
        {"event_id": "x2", "customer_id": customer.customer_id, "event_name": "llm.usage", "timestamp": now,
         "metadata": {"model": "mini", "tokens": 999}},
    ])
    world.deduct()
    assert world.balance(ce.id, customer.customer_id) == "75"


def test_balance_low_fires_when_crossing_threshold(world: World, client: dodopayments.DodoPayments,
                                                   receiver: Receiver) -> None:
    world.webhook(receiver.url, filter_types=["credit.balance_low"])
    customer = world.customer()
    ce = world.entitlement(precision=0)
    plan = world.plan(credits=[{"credit_entitlement_id": ce.id, "credits_amount": "100",
                                "low_balance_threshold_percent": 20}])
    sub_id = world.buy(plan.product_id, customer.customer_id)["subscription_id"]
    balances = client.credit_entitlements.balances
    balances.create_ledger_entry(customer.customer_id, credit_entitlement_id=ce.id, amount="75", entry_type="debit")
    balances.create_ledger_entry(customer.customer_id, credit_entitlement_id=ce.id, amount="10", entry_type="debit")
    balances.create_ledger_entry(customer.customer_id, credit_entitlement_id=ce.id, amount="5", entry_type="debit")
    [low] = receiver.wait_type("credit.balance_low")
    data = low.json["data"]
    assert (data["available_balance"], data["threshold_amount"], data["threshold_percent"]) == ("15", "20", 20)
    assert (data["subscription_id"], data["subscription_credits_amount"]) == (sub_id, "100")


def test_background_deduction_runs_on_its_own() -> None:
    with run_emulator(deduct_interval_s=0.05) as emu:
        client = emu.sdk()
        customer = client.customers.create(email="bg@example.com", name="Bg")
        ce = client.credit_entitlements.create(name="c", overage_enabled=False, precision=0, rollover_enabled=False,
                                               unit="calls")
        client.credit_entitlements.balances.create_ledger_entry(
            customer.customer_id, credit_entitlement_id=ce.id, amount="10", entry_type="credit")
        meter = client.meters.create(aggregation={"type": "count"}, event_name="call", measurement_unit="calls",
                                     name="calls")
        client.products.create(
            name="usage", tax_category="saas",
            price={"type": "usage_based_price", "fixed_price": 0, "currency": "USD", "payment_frequency_count": 1,
                   "payment_frequency_interval": "Month", "subscription_period_count": 20,
                   "subscription_period_interval": "Year",
                   "meters": [{"meter_id": meter.id, "credit_entitlement_id": ce.id, "meter_units_per_credit": "1"}]},
        )
        client.usage_events.ingest(events=[
            {"event_id": f"c{i}", "customer_id": customer.customer_id, "event_name": "call"} for i in range(4)
        ])

        def balance() -> str:
            return client.credit_entitlements.balances.retrieve(customer.customer_id,
                                                                credit_entitlement_id=ce.id).balance

        wait_for(lambda: balance() == "6", what="background deduction")
