"""`tollgate dodo bootstrap`: create or find everything Tollgate needs in a Dodo account, and record
the ids in the catalogue file. Idempotent: every object is found first (by name, event name,
`metadata.tollgate_key` or URL), so a second run creates nothing; drifted settings are updated.

Works the same against the emulator and real Dodo (test or live mode): only the client differs.
Lists are paged by hand with explicit page numbers (the SDK's auto-pager skips page 1).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from dodopayments import AsyncDodoPayments
from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from tollgate_dodo.catalogue import Catalogue, MeterStrategy, Pack, PlanProduct
from tollgate_dodo.meters import TOKENS_PROPERTY, MeterSpec, plan_meters
from tollgate_money import PriceBook
from tollgate_platform.settings import ServiceSettings

ENTITLEMENT_NAME = "Tollgate USD credits"
SEAT_ADDON_NAME = "Tollgate Team seat"
WEBHOOK_KEY = "ledger-webhook"
CURRENCY: Final = "USD"
TAX_CATEGORY: Final = "saas"
PAGE_SIZE = 100
# (price in cents, credits): 1 credit = 1 cent, so a pack's credits equal its price.
PACKS: tuple[tuple[int, int], ...] = ((500, 500), (1000, 1000), (5000, 5000), (10000, 10000))
PLUS_CENTS = 2000
TEAM_SEAT_CENTS = 2500
MONTHLY: dict[str, Any] = {
    "payment_frequency_count": 1,
    "payment_frequency_interval": "Month",
    # Dodo's advice for "renews until cancelled": the longest period it allows.
    "subscription_period_count": 20,
    "subscription_period_interval": "Year",
}


class BootstrapSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="TOLLGATE_DODO_", env_file=".env", env_ignore_empty=True, extra="ignore", populate_by_name=True
    )

    meter_strategy: MeterStrategy = "weighted"
    reference_model: str = "gpt-4o"
    # 7 places: one credit quantum is 10^-7 cent = exactly one nano-dollar, so Dodo's balance and
    # the ledger's nanos agree to the nano and meter deductions of single tokens are exact.
    credit_precision: int = Field(7, ge=0, le=10)
    ledger_public_url: str = Field(
        "http://127.0.0.1:8081",
        validation_alias=AliasChoices("TOLLGATE_LEDGER_PUBLIC_URL", "tollgate_ledger_public_url"),
    )


@dataclass
class BootstrapReport:
    catalogue: Catalogue
    created: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "found": self.found,
            "updated": self.updated,
            "warnings": self.warnings,
            "catalogue": self.catalogue.model_dump(mode="json"),
        }


def webhook_url(ledger_public_url: str) -> str:
    return f"{ledger_public_url.rstrip('/')}/webhooks/dodo"


async def bootstrap(
    client: AsyncDodoPayments, book: PriceBook, settings: BootstrapSettings, *, save: bool = True
) -> BootstrapReport:
    run = _Run(client, book, settings)
    report = await run.execute()
    if save:
        report.catalogue.save(settings.dodo_catalogue_file)
    return report


async def _pages(fetch: Callable[..., Awaitable[Any]], **params: Any) -> list[Any]:
    items: list[Any] = []
    page = 0
    while True:
        result = await fetch(page_number=page, page_size=PAGE_SIZE, **params)
        batch = list(result.items or [])
        items.extend(batch)
        if len(batch) < PAGE_SIZE:
            return items
        page += 1


def _key(metadata: Any) -> str | None:
    value = (metadata or {}).get("tollgate_key") if isinstance(metadata, dict) else None
    return str(value) if value is not None else None


def _same_decimal(a: Any, b: Any) -> bool:
    try:
        return Decimal(str(a)) == Decimal(str(b))
    except ArithmeticError:
        return False


class _Run:
    def __init__(self, client: AsyncDodoPayments, book: PriceBook, settings: BootstrapSettings) -> None:
        self.client = client
        self.book = book
        self.settings = settings
        self.report = BootstrapReport(catalogue=Catalogue(credit_entitlement_id="", packs=[]))
        self.products: dict[str, Any] = {}
        self.archived: set[str] = set()

    def _note(self, bucket: list[str], what: str) -> None:
        bucket.append(what)

    async def execute(self) -> BootstrapReport:
        reference = self.book.price(self.settings.reference_model)
        if reference is None:
            raise ValueError(f"reference model {self.settings.reference_model} is not in the price book")
        ce_id, precision = await self._entitlement()
        await self._load_products()
        packs = [await self._pack(ce_id, cents, credits) for cents, credits in PACKS]
        specs = plan_meters(self.settings.meter_strategy, self.book, self.settings.reference_model)
        meters = await self._meters(specs)
        usage_products = await self._usage_products(ce_id, specs, meters)
        seat_addon = await self._seat_addon()
        plans = [await self._plus(), await self._team(seat_addon)]
        webhook_id = await self._webhook()
        self.report.catalogue = Catalogue(
            dodo_base_url=self.settings.dodo_base_url,
            credit_entitlement_id=ce_id,
            credit_precision=precision,
            packs=packs,
            plans=plans,
            seat_addon_id=seat_addon,
            team_included_seats=1,
            meter_strategy=self.settings.meter_strategy,
            meters=meters,
            units_per_credit={s.event_name: str(s.units_per_credit) for s in specs if s.units_per_credit is not None},
            usage_product_id=usage_products.get("credits") or next(iter(usage_products.values()), None),
            usage_products=usage_products,
            price_book_version=self.book.version,
            reference_model=self.settings.reference_model,
            reference_input_per_m=reference.input_per_m,
            reference_output_per_m=reference.output_per_m,
            webhook_endpoint_id=webhook_id,
            webhook_url=webhook_url(self.settings.ledger_public_url),
        )
        return self.report

    # -- credit entitlement -------------------------------------------------------------------

    async def _entitlement(self) -> tuple[str, int]:
        for ce in await _pages(self.client.credit_entitlements.list):
            if ce.name == ENTITLEMENT_NAME:
                self._note(self.report.found, f"credit entitlement {ce.id}")
                if ce.precision != self.settings.credit_precision:
                    self.report.warnings.append(
                        f"credit entitlement {ce.id} has precision {ce.precision} (precision cannot change); "
                        f"configured {self.settings.credit_precision}"
                    )
                if ce.overage_enabled:
                    await self.client.credit_entitlements.update(ce.id, overage_enabled=False)
                    self._note(self.report.updated, f"credit entitlement {ce.id}: overage disabled")
                return ce.id, int(ce.precision)
        ce = await self.client.credit_entitlements.create(
            name=ENTITLEMENT_NAME,
            unit="USD cents",
            precision=self.settings.credit_precision,
            currency=CURRENCY,
            overage_enabled=False,
            rollover_enabled=False,
            description="Prepaid Tollgate balance: 1 credit = 1 US cent. Never expires; no overage.",
        )
        self._note(self.report.created, f"credit entitlement {ce.id}")
        return ce.id, int(ce.precision)

    # -- products -----------------------------------------------------------------------------

    async def _load_products(self) -> None:
        for product in await _pages(self.client.products.list):
            key = _key(product.metadata)
            if key is not None:
                self.products.setdefault(key, product)
        for product in await _pages(self.client.products.list, archived=True):
            key = _key(product.metadata)
            if key is not None and key not in self.products:
                self.products[key] = product
                self.archived.add(key)

    async def _product(self, key: str, name: str, desired: dict[str, Any], matches: Callable[[Any], bool]) -> str:
        """Find a product by metadata.tollgate_key; create it, or update it when its terms drifted."""
        metadata: dict[str, str | float | bool] = {"tollgate_key": key}
        existing = self.products.get(key)
        if existing is None:
            product = await self.client.products.create(
                name=name, tax_category=TAX_CATEGORY, metadata=metadata, **desired
            )
            self._note(self.report.created, f"product {key} {product.product_id}")
            return str(product.product_id)
        product_id = str(existing.product_id)
        if key in self.archived:
            await self.client.products.unarchive(product_id)
            self.archived.discard(key)
            self._note(self.report.updated, f"product {key} {product_id} unarchived")
        full = await self.client.products.retrieve(product_id)
        if matches(full):
            self._note(self.report.found, f"product {key} {product_id}")
        else:
            await self.client.products.update(product_id, name=name, metadata=metadata, **desired)
            self._note(self.report.updated, f"product {key} {product_id}")
        return product_id

    async def _pack(self, ce_id: str, cents: int, credits: int) -> Pack:
        name = f"Tollgate credits ${cents // 100}"
        desired = {
            "price": {"type": "one_time_price", "price": cents, "currency": CURRENCY, "discount": 0,
                      "purchasing_power_parity": False},
            "credit_entitlements": [{"credit_entitlement_id": ce_id, "credits_amount": str(credits)}],
        }

        def matches(product: Any) -> bool:
            price = product.price
            attached = [(c.credit_entitlement_id, c.credits_amount) for c in product.credit_entitlements or []]
            return (
                getattr(price, "type", None) == "one_time_price"
                and getattr(price, "price", None) == cents
                and len(attached) == 1
                and attached[0][0] == ce_id
                and _same_decimal(attached[0][1], credits)
            )

        product_id = await self._product(f"topup_{cents}", name, desired, matches)
        return Pack(product_id=product_id, name=name, price_cents=cents, credits=credits)

    async def _usage_products(self, ce_id: str, specs: list[MeterSpec], meters: dict[str, str]) -> dict[str, str]:
        """The usage-based product(s) whose prices link credit meters to the entitlement. One product
        for the meter pair; one per model for per-model meters (Dodo caps meters per product)."""
        linked = [s for s in specs if s.units_per_credit is not None]
        groups: dict[str, list[MeterSpec]] = {}
        for spec in linked:
            groups.setdefault(f"model:{spec.model}" if spec.model else "credits", []).append(spec)
        ids: dict[str, str] = {}
        for key, group in groups.items():
            name = "Tollgate metered usage" + (f" ({key.removeprefix('model:')})" if key != "credits" else "")
            ids[key] = await self._usage_product(key, name, ce_id, group, meters)
        # Links left by another strategy would deduct credits for meters nobody feeds any more,
        # or twice if both were fed: archive them (unarchiving by hand brings them back).
        for key, product in self.products.items():
            if key.startswith("usage_") and key.removeprefix("usage_") not in groups and key not in self.archived:
                await self.client.products.archive(str(product.product_id))
                self._note(self.report.updated, f"product {key} {product.product_id} archived")
        return ids

    async def _usage_product(
        self, key: str, name: str, ce_id: str, group: list[MeterSpec], meters: dict[str, str]
    ) -> str:
        entries: list[dict[str, Any]] = []
        for spec in group:
            entry: dict[str, Any] = {
                "meter_id": meters[spec.event_name],
                "credit_entitlement_id": ce_id,
                "meter_units_per_credit": str(spec.units_per_credit),
                "free_threshold": 0,
            }
            unit_price = spec.price_per_unit_cents
            if unit_price is not None:
                entry["price_per_unit"] = format(unit_price, "f")
            entries.append(entry)
        desired = {"price": {"type": "usage_based_price", "fixed_price": 0, "currency": CURRENCY, **MONTHLY,
                             "meters": entries}}
        wanted = {(e["meter_id"], e["credit_entitlement_id"], Decimal(e["meter_units_per_credit"])) for e in entries}

        def matches(product: Any) -> bool:
            price = product.price
            if getattr(price, "type", None) != "usage_based_price":
                return False
            have = {
                (m.meter_id, m.credit_entitlement_id, Decimal(str(m.meter_units_per_credit)))
                for m in getattr(price, "meters", None) or []
                if m.credit_entitlement_id and m.meter_units_per_credit
            }
            return have == wanted

        return await self._product(f"usage_{key}", name, desired, matches)

    async def _plus(self) -> PlanProduct:
        desired = {"price": {"type": "recurring_price", "price": PLUS_CENTS, "currency": CURRENCY, **MONTHLY}}
        product_id = await self._product("plan_plus", "Tollgate Plus", desired, _recurring_at(PLUS_CENTS))
        return PlanProduct(product_id=product_id, plan="plus", price_cents=PLUS_CENTS)

    async def _team(self, seat_addon: str) -> PlanProduct:
        # The base price is the first seat; every further seat is one unit of the seat add-on.
        desired = {
            "price": {"type": "recurring_price", "price": TEAM_SEAT_CENTS, "currency": CURRENCY, **MONTHLY},
            "addons": [seat_addon],
        }
        base = _recurring_at(TEAM_SEAT_CENTS)

        def matches(product: Any) -> bool:
            return base(product) and list(product.addons or []) == [seat_addon]

        product_id = await self._product("plan_team", "Tollgate Team (per seat)", desired, matches)
        return PlanProduct(product_id=product_id, plan="team", price_cents=TEAM_SEAT_CENTS)

    async def _seat_addon(self) -> str:
        for addon in await _pages(self.client.addons.list):
            if addon.name == SEAT_ADDON_NAME:
                if addon.price != TEAM_SEAT_CENTS:
                    await self.client.addons.update(addon.id, price=TEAM_SEAT_CENTS)
                    self._note(self.report.updated, f"addon {addon.id}")
                else:
                    self._note(self.report.found, f"addon {addon.id}")
                return str(addon.id)
        addon = await self.client.addons.create(
            name=SEAT_ADDON_NAME, price=TEAM_SEAT_CENTS, currency=CURRENCY, tax_category=TAX_CATEGORY,
            description="One more seat on Tollgate Team, per month.",
        )
        self._note(self.report.created, f"addon {addon.id}")
        return str(addon.id)

    # -- meters -------------------------------------------------------------------------------

    async def _meters(self, specs: list[MeterSpec]) -> dict[str, str]:
        existing: dict[str, Any] = {}
        for meter in await _pages(self.client.meters.list):
            existing.setdefault(meter.event_name, meter)
        ids: dict[str, str] = {}
        for spec in specs:
            meter = existing.get(spec.event_name)
            if meter is not None and (meter.aggregation.type != "sum" or meter.aggregation.key != TOKENS_PROPERTY):
                # An aggregation cannot be changed; a meter with the wrong one would count wrongly.
                raise ValueError(
                    f"meter {meter.id} for {spec.event_name} aggregates {meter.aggregation.type}"
                    f"({meter.aggregation.key}); archive it and run bootstrap again"
                )
            if meter is None:
                meter = await self.client.meters.create(
                    name=spec.name, event_name=spec.event_name, measurement_unit=spec.measurement_unit,
                    description=spec.description, aggregation={"type": "sum", "key": TOKENS_PROPERTY},
                )
                self._note(self.report.created, f"meter {spec.event_name} {meter.id}")
            elif meter.measurement_unit != spec.measurement_unit or meter.name != spec.name:
                await self.client.meters.update(
                    meter.id, name=spec.name, measurement_unit=spec.measurement_unit, description=spec.description
                )
                self._note(self.report.updated, f"meter {spec.event_name} {meter.id}")
            else:
                self._note(self.report.found, f"meter {spec.event_name} {meter.id}")
            ids[spec.event_name] = str(meter.id)
        return ids

    # -- webhook endpoint ---------------------------------------------------------------------

    async def _webhook(self) -> str:
        url = webhook_url(self.settings.ledger_public_url)
        metadata = {"tollgate_key": WEBHOOK_KEY}
        for endpoint in await self._webhooks():
            if endpoint.url == url or _key(endpoint.metadata) == WEBHOOK_KEY:
                if endpoint.url != url or endpoint.disabled:
                    await self.client.webhooks.update(endpoint.id, url=url, disabled=False, metadata=metadata)
                    self._note(self.report.updated, f"webhook {endpoint.id} -> {url}")
                else:
                    self._note(self.report.found, f"webhook {endpoint.id}")
                return str(endpoint.id)
        endpoint = await self.client.webhooks.create(
            url=url, description="Tollgate ledger", metadata=metadata, idempotency_key=f"tollgate-{WEBHOOK_KEY}"
        )
        self._note(self.report.created, f"webhook {endpoint.id} -> {url}")
        return str(endpoint.id)

    async def _webhooks(self) -> list[Any]:
        endpoints: list[Any] = []
        iterator: str | None = None
        while True:
            params: dict[str, Any] = {"limit": PAGE_SIZE}
            if iterator:
                params["iterator"] = iterator
            page = await self.client.webhooks.list(**params)
            endpoints.extend(page.data or [])
            if page.done or not page.iterator or not page.data:
                return endpoints
            iterator = page.iterator


def _recurring_at(cents: int) -> Callable[[Any], bool]:
    def matches(product: Any) -> bool:
        price = product.price
        return (
            getattr(price, "type", None) == "recurring_price"
            and getattr(price, "price", None) == cents
            and getattr(price, "payment_frequency_interval", None) == "Month"
            and getattr(price, "payment_frequency_count", None) == 1
        )

    return matches
