"""Acceptance, Team: seats are the base seat plus the seat add-on quantity. With 3 seats, 3
members get keys and work; a 4th is refused (409) until a plan change raises the add-on
quantity so the team has 4 seats; then it works. Members' usage counts against the team's cap;
removing a member frees the seat and stops their keys at once."""

from __future__ import annotations

from subscriptions.support import TEAM_CAP_PER_SEAT, World
from support.servers import eventually
from tollgate_dodo.catalogue import Catalogue


async def add_member(world: World, customer: str, email: str, expect: int = 201) -> dict[str, object]:
    return dict(await world.call("POST", f"/customers/{customer}/members", expect=expect, json={"email": email}))


async def test_team_seats_bound_members_until_a_plan_change_adds_one(world: World) -> None:
    customer = await world.new_customer()
    subscription = await world.subscribe(customer, "team", seats=3)
    plan = await world.plan(customer)
    assert plan["seats"] == 3 and plan["cap_nanos"] == 3 * TEAM_CAP_PER_SEAT

    keys = []
    for n in range(3):
        member = await add_member(world, customer, f"member{n}@team.example")
        keys.append(await world.issue_key(customer, str(member["member_id"])))
    used = 0
    for key in keys:
        reply = await world.chat(key, "gpt-4o")
        assert reply.status == 200 and reply.mode == "subscription" and reply.model == "gpt-4o"
        used += reply.list_price(world.book)
    # Every member's usage is the team's: one counter, one cap.
    await world.wait_plan(customer, used_nanos=used)

    refused = await add_member(world, customer, "fourth@team.example", expect=409)
    assert refused["error"]["code"] == "seat_limit_reached"  # type: ignore[index]

    change = await world.call("POST", f"/customers/{customer}/subscription/seats", expect=202, json={"seats": 4})
    assert change["subscription_id"] == subscription and change["requested_seats"] == 4
    grown = await world.wait_plan(customer, seats=4)  # Dodo's subscription.plan_changed arrived
    assert grown["cap_nanos"] == 4 * TEAM_CAP_PER_SEAT
    await world.wait_hot(customer, cap=4 * TEAM_CAP_PER_SEAT)
    async with world.sdk() as sdk:
        dodo_view = await sdk.subscriptions.retrieve(subscription)
    assert [(a.addon_id, a.quantity) for a in dodo_view.addons] == [(seat_addon(world), 3)]

    fourth = await add_member(world, customer, "fourth@team.example")
    fourth_key = await world.issue_key(customer, str(fourth["member_id"]))
    reply = await world.chat(fourth_key, "gpt-4o")
    assert reply.status == 200 and reply.mode == "subscription"

    # Seats cannot go below the members holding them; removing a member frees a seat and
    # revokes their keys on every gateway at once.
    below = await world.call("POST", f"/customers/{customer}/subscription/seats", expect=409, json={"seats": 3})
    assert below["error"]["code"] == "seats_below_members"
    removed = await world.call("DELETE", f"/customers/{customer}/members/{fourth['member_id']}")
    assert len(removed["revoked_key_ids"]) == 1
    await eventually(lambda: _refused(world, fourth_key), timeout=5)  # even from the gateway's key cache
    late = await world.call("POST", f"/customers/{customer}/members/{fourth['member_id']}/keys", expect=409,
                            json={"name": "late"})
    assert late["error"]["code"] == "member_removed"
    members = await world.call("GET", f"/customers/{customer}/members")
    assert len(members) == 3 and all(m["active_keys"] == 1 for m in members)


async def test_members_need_a_team_plan(world: World) -> None:
    customer = await world.new_customer()
    refused = await add_member(world, customer, "solo@example.com", expect=409)
    assert refused["error"]["code"] == "team_plan_required"  # type: ignore[index]
    await world.subscribe(customer, "plus")
    refused = await add_member(world, customer, "solo@example.com", expect=409)
    assert refused["error"]["code"] == "team_plan_required"  # type: ignore[index]


def seat_addon(world: World) -> str:
    catalogue = Catalogue.load(world.settings.dodo_catalogue_file)
    assert catalogue is not None and catalogue.seat_addon_id
    return catalogue.seat_addon_id


async def _refused(world: World, key: str) -> bool:
    return bool((await world.chat(key, "gpt-4o-mini")).status == 401)
