"""What `tollgate dodo bootstrap` provisioned in Dodo, recorded as JSON so every service (and a
second bootstrap run) finds the same ids. Written only by bootstrap; read by everyone else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

MeterStrategy = Literal["token_meters", "per_model_meters", "weighted"]


class Pack(BaseModel):
    product_id: str
    name: str
    price_cents: int
    credits: int  # 1 credit = 1 cent


class PlanProduct(BaseModel):
    product_id: str
    plan: Literal["plus", "team"]
    price_cents: int  # per month (per seat for team)


class Catalogue(BaseModel):
    dodo_base_url: str | None = None
    credit_entitlement_id: str
    packs: list[Pack]
    plans: list[PlanProduct] = Field(default_factory=list)
    seat_addon_id: str | None = None
    meter_strategy: MeterStrategy = "token_meters"
    meters: dict[str, str] = Field(default_factory=dict)  # event name -> meter id
    usage_product_id: str | None = None
    webhook_endpoint_id: str | None = None
    # Written by bootstrap alongside the ids; older files without them still load.
    webhook_url: str | None = None
    credit_precision: int | None = None  # decimal places of the credit entitlement
    team_included_seats: int = 1  # seats in the Team base price; each seat add-on unit is one more
    price_book_version: str | None = None
    reference_model: str | None = None
    reference_input_per_m: int | None = None  # nanos per 1M tokens the credit-linked pair is priced at
    reference_output_per_m: int | None = None
    units_per_credit: dict[str, str] = Field(default_factory=dict)  # credit-linked event name -> decimal
    usage_products: dict[str, str] = Field(default_factory=dict)  # key ("credits" or "model:<m>") -> id

    def pack(self, product_id: str) -> Pack | None:
        return next((p for p in self.packs if p.product_id == product_id), None)

    def plan_for(self, product_id: str) -> PlanProduct | None:
        return next((p for p in self.plans if p.product_id == product_id), None)

    @classmethod
    def load(cls, path: Path) -> Catalogue | None:
        return cls.model_validate(json.loads(path.read_text())) if path.exists() else None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)
