"""The gateway facing malformed JSON, wrong types, huge bodies, thousands of messages, unicode
edge cases and header injection: an OpenAI-shaped 4xx every time, never a 5xx, no upstream call,
no charge, and the gateway keeps serving."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from security.conftest import Customer, Tollgate, assert_openai_error
from tollgate_hotstate import CustomerKeys

CHAT = "/v1/chat/completions"
OK = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def _with(**fields: Any) -> bytes:
    return json.dumps({**OK, **fields}).encode()


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


# (id, path, body bytes, expected status or None for any 4xx)
CASES: list[tuple[str, str, bytes, int | None]] = [
    ("truncated json", CHAT, b'{"model":', 400),
    ("empty body", CHAT, b"", 400),
    ("array body", CHAT, b"[]", 400),
    ("string body", CHAT, b'"gpt-4o"', 400),
    ("null body", CHAT, b"null", 400),
    ("NaN", CHAT, b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":NaN}', 400),
    ("number overflow", CHAT, b'{"model":"gpt-4o-mini","messages":[],"max_tokens":1e400}', 400),
    ("deep nesting", CHAT, b'{"model":"gpt-4o-mini","messages":' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400),
    ("model not a string", CHAT, _with(model=["gpt-4o"]), 400),
    ("model missing", CHAT, json.dumps({"messages": OK["messages"]}).encode(), 400),
    ("messages a string", CHAT, _with(messages="hi"), 400),
    ("messages of numbers", CHAT, _with(messages=[1, 2, 3]), 400),
    ("messages empty", CHAT, _with(messages=[]), 400),
    ("max_tokens a string", CHAT, _with(max_tokens="10"), 400),
    ("max_tokens negative", CHAT, _with(max_tokens=-5), 400),
    ("max_tokens zero", CHAT, _with(max_tokens=0), 400),
    ("max_tokens a float", CHAT, _with(max_tokens=2.5), 400),
    ("max_tokens a bool", CHAT, _with(max_tokens=True), 400),
    ("max_tokens 2^100", CHAT, _with(max_tokens=2**100), 400),
    ("max_completion_tokens a list", CHAT, _with(max_completion_tokens=[5]), 400),
    ("n zero", CHAT, _with(n=0), 400),
    ("n huge", CHAT, _with(n=10**9), 400),
    ("stream a string", CHAT, _with(stream="yes"), 400),
    ("stream_options a string", CHAT, _with(stream=True, stream_options="usage"), 400),
    ("lone surrogate in model", CHAT, _raw('{"model":"\\ud800","messages":[{"role":"user","content":"hi"}]}'), 400),
    ("lone surrogate in content", CHAT,
     _raw('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"a\\udfffb"}]}'), 400),
    ("invalid utf-8", CHAT, b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\xff\xfe\xc0\xaf"}]}', 400),
    ("byte order mark", CHAT, b"\xef\xbb\xbf" + _with(), 400),
    ("RTL override in model", CHAT, _with(model="gpt-4o-mini\u202e"), 404),
    ("NUL in model", CHAT, _with(model="gpt-4o-mini\u0000"), 404),
    ("homoglyph model", CHAT, _with(model="gpt-4о-mini"), 404),  # Cyrillic o
    ("model with path", CHAT, _with(model="../gpt-4o-mini"), 404),
    ("legacy prompt an object", "/v1/completions",
     json.dumps({"model": "gpt-4o-mini", "prompt": {"a": 1}, "max_tokens": 5}).encode(), 400),
    ("legacy max_tokens a string", "/v1/completions",
     json.dumps({"model": "gpt-4o-mini", "prompt": "hi", "max_tokens": "5"}).encode(), 400),
    ("embeddings input an object", "/v1/embeddings",
     json.dumps({"model": "text-embedding-3-small", "input": {"a": 1}}).encode(), 400),
    ("embeddings without model", "/v1/embeddings", json.dumps({"input": "hi"}).encode(), 400),
    ("responses background", "/v1/responses",
     json.dumps({"model": "gpt-4o-mini", "input": "hi", "background": True}).encode(), 400),
    ("responses max_output_tokens a string", "/v1/responses",
     json.dumps({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": "9"}).encode(), 400),
    ("unknown endpoint", "/v1/chat/complete", _with(), 404),
    ("images are not served", "/v1/images/generations", json.dumps({"prompt": "a cat"}).encode(), 404),
]


@pytest.fixture(scope="module")
async def victim(tollgate: Tollgate) -> Customer:
    """The customer whose key sends every bad request: 20 cents, never to be charged."""
    return await tollgate.customer(cents=20, name="bad-input")


async def _send(tollgate: Tollgate, customer: Customer, path: str, body: bytes, gateway: int = 0) -> httpx.Response:
    async with httpx.AsyncClient(base_url=tollgate.gateways[gateway], timeout=60) as client:
        return await client.post(path, content=body, headers={"Authorization": f"Bearer {customer.key}",
                                                              "Content-Type": "application/json"})


@pytest.mark.parametrize(("path", "body", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_requests_get_an_openai_shaped_4xx_and_never_reach_the_upstream(
    tollgate: Tollgate, victim: Customer, path: str, body: bytes, status: int | None
) -> None:
    before = await tollgate.upstream_calls()
    r = await _send(tollgate, victim, path, body)
    assert_openai_error(r, status)
    assert await tollgate.upstream_calls() == before


async def test_wrong_methods_are_refused_in_shape(tollgate: Tollgate, victim: Customer) -> None:
    headers = {"Authorization": f"Bearer {victim.key}"}
    async with httpx.AsyncClient(base_url=tollgate.gateways[1], timeout=30) as client:
        for method, path in (("GET", CHAT), ("PUT", CHAT), ("DELETE", "/v1/embeddings"), ("POST", "/v1/models")):
            r = await client.request(method, path, headers=headers)
            assert_openai_error(r)
            assert r.status_code in (404, 405)


async def test_a_huge_body_is_refused_with_413_before_it_is_read(tollgate: Tollgate, victim: Customer) -> None:
    before = await tollgate.upstream_calls()
    huge = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + b"a" * (5 * 1024 * 1024) + b'"}]}'
    body = assert_openai_error(await _send(tollgate, victim, CHAT, huge), 413)
    assert body["error"]["code"] == "request_too_large"
    # A Content-Length that announces more than the limit is refused without waiting for it.
    port = int(tollgate.gateways[0].rsplit(":", 1)[1])
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {victim.key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n").encode()
    reply = await asyncio.to_thread(_raw_exchange, port, head + b'{"model":')
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert await tollgate.upstream_calls() == before


async def test_thousands_of_messages_beyond_the_balance_are_refused(tollgate: Tollgate) -> None:
    poor = await tollgate.customer(cents=1, name="many-messages")
    before = await tollgate.upstream_calls()
    body = json.dumps({"model": "gpt-4o", "max_tokens": 10,
                       "messages": [{"role": "user", "content": f"message {i}"} for i in range(5000)]}).encode()
    body_json = assert_openai_error(await _send(tollgate, poor, CHAT, body), 402)
    assert body_json["error"]["code"] == "insufficient_quota"
    assert await tollgate.upstream_calls() == before


async def test_a_prompt_longer_than_the_models_context_window_never_reaches_the_upstream(tollgate: Tollgate) -> None:
    """20,000 messages (~300k tokens) for a 128k-token model: the upstream can only refuse it
    (OpenAI: 400 context_length_exceeded), so the gateway, which knows every model's context
    window from the price book, should refuse it itself instead of forwarding 1.8 MB."""
    rich = await tollgate.customer(cents=1000, name="context-window")
    before = await tollgate.upstream_calls()
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 10,
                       "messages": [{"role": "user", "content": "hello there friend " * 3}] * 20_000}).encode()
    r = await _send(tollgate, rich, CHAT, body)
    assert_openai_error(r, 400)
    assert await tollgate.upstream_calls() == before


def _raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out:
                    head, _, rest = out.partition(b"\r\n\r\n")
                    lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
                    if lengths and len(rest) >= int(lengths[0].split(b":")[1]):
                        break
        except TimeoutError:
            pass
        return out


@pytest.mark.parametrize("header", [
    b"X-Client-Request-Id: abc\nX-Injected: 1",  # bare LF inside a header line
    b"X-Client-Request-Id: abc\rX-Injected: 1",  # bare CR
    b"X-Client-Request-Id: ab\x00c",  # NUL
    b"Authorization: Bearer sk-tg-\r\n injected-continuation",  # obsolete line folding
], ids=["bare LF", "bare CR", "NUL", "line folding"])
async def test_header_injection_is_refused_and_reaches_nothing(
    tollgate: Tollgate, victim: Customer, header: bytes
) -> None:
    """Refused by the HTTP parser itself (a plain 400 before the application runs, so not in
    OpenAI's shape: there is no request to answer for), and nothing is forwarded or charged."""
    before = await tollgate.upstream_calls()
    port = int(tollgate.gateways[1].rsplit(":", 1)[1])
    body = _with()
    request = (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {victim.key}\r\n".encode()
               + header + b"\r\nContent-Type: application/json\r\nContent-Length: "
               + str(len(body)).encode() + b"\r\n\r\n" + body)
    reply = await asyncio.to_thread(_raw_exchange, port, request)
    status = int(reply.split(b" ", 2)[1])
    assert 400 <= status < 500, reply[:300]
    assert b"x-injected" not in reply.lower()
    assert await tollgate.upstream_calls() == before


async def test_a_split_header_line_is_only_a_separate_header(tollgate: Tollgate, victim: Customer) -> None:
    """CRLF inside a value is, on the wire, the end of the header: the 'injected' header is just
    another request header, ignored, and never reflected into the response."""
    port = int(tollgate.gateways[0].rsplit(":", 1)[1])
    body = _with(model="no-such-model")
    request = (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {victim.key}\r\n"
               "X-Client-Request-Id: abc\r\nSet-Cookie: session=stolen\r\nX-Tollgate-Customer: cus_other\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    reply = await asyncio.to_thread(_raw_exchange, port, request)
    head = reply.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 404")
    assert b"set-cookie" not in head and b"cus_other" not in head


async def test_unicode_content_is_forwarded_exactly_and_billed_once(tollgate: Tollgate) -> None:
    customer = await tollgate.customer(cents=50, name="unicode")
    content = "RTL \u202eevil\u202c, NUL \u0000, emoji \U0001f680, CJK 漢字, combining e\u0301, zero-width \u200b"
    async with httpx.AsyncClient(base_url=tollgate.gateways[0], timeout=30) as client:
        r = await client.post(CHAT, headers={"Authorization": f"Bearer {customer.key}"}, json={
            "model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": content}]})
    assert r.status_code == 200, r.text
    request_id = r.headers["x-request-id"]
    async with tollgate.mock() as mock:
        log = (await mock.get("/_mock/requests")).json()["requests"]
    forwarded = [q for q in log if q["headers"].get("x-client-request-id") == request_id]
    assert len(forwarded) == 1
    assert forwarded[0]["body"]["messages"][0]["content"] == content


async def test_none_of_it_cost_the_customer_anything(tollgate: Tollgate, victim: Customer) -> None:
    """Runs after the bad requests above: no hold left, nothing charged, one grant in the ledger."""
    await asyncio.sleep(1.0)  # anything wrongly charged would have been published and posted by now
    r = redis.Redis.from_url(tollgate.infra.redis_url, decode_responses=True)
    try:
        acct = await r.hgetall(CustomerKeys(victim.customer_id).acct)
    finally:
        await r.aclose()
    if acct:
        assert int(acct.get("reserved", 0)) == 0 and int(acct.get("unposted", 0)) == 0, acct
    conn = await asyncpg.connect(tollgate.infra.database_url)
    try:
        kinds = await conn.fetch("SELECT kind, amount_nanos FROM ledger.entries WHERE customer_id = $1",
                                 victim.customer_id)
    finally:
        await conn.close()
    assert [(k["kind"], k["amount_nanos"]) for k in kinds] == [("grant", 20 * 10_000_000)]
    for gateway in tollgate.gateways:
        async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
            assert (await client.get("/readyz")).status_code == 200
