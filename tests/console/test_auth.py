"""Signing in and out, the session cookie, CSRF and the one-time links: what stands between a
visitor and an account's data."""

from __future__ import annotations

import httpx

from console.conftest import Stack
from console.support import ADMIN_TOKEN, csrf_of, text_of


async def test_pages_ask_for_sign_in_and_a_key_opens_the_customers_own_overview(console_stack: Stack) -> None:
    console = console_stack.console
    _, key, _ = await console.customer(name="Grace Hopper", cents=500)
    async with console.browser() as browser:
        bounced = await browser.get("/console/usage")
        assert bounced.status_code == 303
        assert bounced.headers["location"] == "/console/sign-in?next=%2Fconsole%2Fusage"
        refused = await browser.post("/console/keys", data={"name": "x"})
        assert refused.status_code in (401, 403)

        wrong = await console.sign_in(browser, "sk-tg-" + "x" * 40)
        assert wrong.status_code == 401 and "not recognised" in text_of(wrong.text)

        signed_in = await console.sign_in(browser, key)
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/console"
        cookie = signed_in.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/console" in cookie
        assert key.lower() not in cookie  # the key itself never travels in the session

        overview = await browser.get("/console")
        assert overview.status_code == 200
        page = text_of(overview.text)
        assert "Grace Hopper" in page and "$5.00" in page
        assert "Credit grant: welcome credits" in page  # the ledger row behind the balance
        assert key not in overview.text
        assert "default-src 'none'" in overview.headers["content-security-policy"]
        assert overview.headers["cache-control"] == "no-store"


async def test_signing_out_ends_the_session(console_stack: Stack) -> None:
    console = console_stack.console
    _, key, _ = await console.customer()
    async with console.browser() as browser:
        await console.sign_in(browser, key)
        out = await console.post_form(browser, "/console/sign-out", {})
        assert out.status_code == 303 and out.headers["location"] == "/console/sign-in"
        assert (await browser.get("/console")).status_code == 303


async def test_forms_need_the_sessions_own_csrf_token(console_stack: Stack) -> None:
    console = console_stack.console
    customer_id, key, _ = await console.customer()
    async with console.browser() as browser, console.browser() as other:
        await console.sign_in(browser, key)
        _, other_key, _ = await console.customer()
        await console.sign_in(other, other_key)
        foreign_token = csrf_of((await other.get("/console/keys")).text)

        missing = await browser.post("/console/keys", data={"name": "no token"})
        foreign = await browser.post("/console/keys", data={"name": "token of another session", "csrf": foreign_token})
        own = csrf_of((await browser.get("/console/keys")).text)
        cross_site = await browser.post(
            "/console/keys", data={"name": "posted by evil.example", "csrf": own},
            headers={"Origin": "https://evil.example"},
        )
        assert missing.status_code == foreign.status_code == cross_site.status_code == 403
        assert "expired" in text_of(missing.text).lower()

        async with console.admin() as admin:
            names = [k["name"] for k in (await admin.get(f"/customers/{customer_id}/keys")).json()]
        assert names == ["sign-in key"], "no refused form created a key"

        accepted = await browser.post("/console/keys", data={"name": "with the right token", "csrf": own})
        assert accepted.status_code == 200


async def test_a_tampered_or_forged_session_cookie_is_no_session(console_stack: Stack) -> None:
    console = console_stack.console
    victim, _, _ = await console.customer(name="Victim")
    _, key, _ = await console.customer(name="Attacker")
    async with console.browser() as browser:
        await console.sign_in(browser, key)
        cookie = browser.cookies.get("tollgate_console")
        assert cookie
        payload = cookie.partition(".")[0]
        forged = cookie.replace(payload, payload[:-2] + ("AA" if not payload.endswith("AA") else "BB"))
        browser.cookies.set("tollgate_console", forged, path="/console")
        assert (await browser.get("/console")).status_code == 303
    async with console.browser() as browser:
        browser.cookies.set("tollgate_console", f'{{"r":"customer","u":"{victim}"}}', path="/console")
        assert (await browser.get("/console")).status_code == 303


async def test_revoking_the_key_a_session_was_opened_with_ends_that_session(console_stack: Stack) -> None:
    console = console_stack.console
    _, key, key_id = await console.customer()
    async with console.browser() as browser:
        await console.sign_in(browser, key)
        assert (await browser.get("/console")).status_code == 200
        async with console.admin() as admin:
            assert (await admin.post(f"/keys/{key_id}/revoke")).status_code == 200
        after = await browser.get("/console")
        assert after.status_code == 303 and after.headers["location"].startswith("/console/sign-in")
        again = await console.sign_in(browser, key)
        assert again.status_code == 401


async def test_a_one_time_link_signs_in_once(console_stack: Stack) -> None:
    console = console_stack.console
    customer_id, _, _ = await console.customer(name="Linked Customer", cents=125)
    async with httpx.AsyncClient(base_url=f"{console.url}/admin/v1", timeout=10) as anonymous:
        assert (await anonymous.post(f"/customers/{customer_id}/console-link")).status_code == 401
    async with console.admin() as admin:
        minted = await admin.post(f"/customers/{customer_id}/console-link", json={"ttl_s": 600})
        assert (await admin.post("/customers/cus_tg_doesnotexist00/console-link")).status_code == 404
    assert minted.status_code == 200
    url = minted.json()["url"]
    path = url.removeprefix(console.url)
    assert path.startswith("/console/link/")
    stored = await console_stack.pool.fetchval(
        "SELECT count(*) FROM ledger.console_links WHERE token_hash = encode(sha256($1::bytea), 'hex')",
        path.rsplit("/", 1)[1].encode(),
    )
    assert stored == 1  # the token is stored only as its hash

    async with console.browser() as browser:
        shown = await browser.get(path)  # a mail scanner fetching the link does not use it up
        shown_again = await browser.get(path)
        assert shown.status_code == shown_again.status_code == 200
        assert "Continue as Linked Customer" in text_of(shown.text)
        used = await browser.post(path, data={"csrf": csrf_of(shown_again.text)})
        assert used.status_code == 303 and used.headers["location"] == "/console"
        overview = text_of((await browser.get("/console")).text)
        assert "Linked Customer" in overview and "$1.25" in overview
    async with console.browser() as browser:
        page = await browser.get(path)
        assert page.status_code == 410
        reuse = await browser.post(path, data={"csrf": csrf_of((await browser.get("/console/sign-in")).text)})
        assert reuse.status_code == 410


async def test_operators_sign_in_with_the_admin_token_and_customers_cannot_see_operator_pages(
    console_stack: Stack,
) -> None:
    console = console_stack.console
    _, key, _ = await console.customer()
    async with console.browser() as browser:
        await console.sign_in(browser, key)
        assert (await browser.get("/console/ops")).status_code == 403
        assert (await browser.get("/console/ops/pipeline")).status_code == 403
    async with console.browser() as browser:
        assert (await browser.get("/console/ops")).status_code == 303
        refused = await console.sign_in_operator(browser, "not-the-token")
        assert refused.status_code == 401
        accepted = await console.sign_in_operator(browser, ADMIN_TOKEN)
        assert accepted.status_code == 303 and accepted.headers["location"] == "/console/ops"
        page = await browser.get("/console/ops")
        assert page.status_code == 200 and ADMIN_TOKEN not in page.text
        assert (await browser.get("/console")).headers["location"] == "/console/ops"


async def test_unknown_console_pages_answer_an_html_not_found(console_stack: Stack) -> None:
    async with console_stack.console.browser() as browser:
        answer = await browser.get("/console/no-such-page")
        bad_cursor = await browser.get("/console/usage?before=yesterday")
        slash = await browser.get("/console/")
    assert answer.status_code == 404 and "There is no such page" in text_of(answer.text)
    assert answer.headers["content-type"].startswith("text/html")
    assert bad_cursor.status_code == 303  # asks for sign-in before reading anything
    assert slash.status_code == 303 and slash.headers["location"] == "/console"


async def test_a_nul_character_anywhere_is_a_400_not_a_crash(console_stack: Stack) -> None:
    console = console_stack.console
    _, key, _ = await console.customer()
    async with console.browser() as browser:
        await console.sign_in(browser, key)
        named = await console.post_form(browser, "/console/keys", {"name": "a\x00b"}, page="/console/keys")
        cursor = await browser.get("/console/usage", params={"before": "2025-01-01T00:00:00+00:00|a\x00"})
        path = await browser.get("/console/keys/key_a%00b/revoke")
    async with console.browser() as browser:
        await console.sign_in_operator(browser)
        search = await browser.get("/console/ops", params={"q": "x\x00"})
        customer = await browser.get("/console/ops/customers/cus_tg_a%00b")
        not_a_number = await browser.get("/console/ops/customers/cus_tg_x?before_seq=abc")
    for answer in (named, cursor, path, search, customer, not_a_number):
        assert answer.status_code == 400, answer.text
        assert answer.headers["content-type"].startswith("text/html")
