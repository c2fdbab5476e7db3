"""API key authentication: sha256 of the presented key, looked up in a short-lived in-process
cache, then Redis `apikey:<hash>`, then the ledger's Postgres view. Revocation reaches every
replica at once through core NATS `cache.invalidate.key`; the cache TTL bounds it otherwise."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis

from tollgate_gateway.errors import GatewayError, invalid_api_key
from tollgate_hotstate.keys import api_key

_MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_hash: str
    key_id: str
    customer_id: str
    dodo_customer_id: str | None
    status: str
    models: frozenset[str] | None  # None: every priced model

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else ("" if value is None else str(value))


def _models(value: Any) -> frozenset[str] | None:
    if isinstance(value, list | tuple):
        names = [str(v).strip() for v in value]
    else:
        names = _text(value).split(",")
    cleaned = frozenset(n.strip() for n in names if n.strip())
    return cleaned or None


def record_from(key_hash: str, fields: dict[str, Any]) -> KeyRecord:
    return KeyRecord(
        key_hash=_text(fields.get("key_hash")) or key_hash,
        key_id=_text(fields.get("key_id")),
        customer_id=_text(fields.get("customer_id")),
        dodo_customer_id=_text(fields.get("dodo_customer_id")) or None,
        status=_text(fields.get("status")) or "active",
        models=_models(fields.get("models")),
    )


def key_hash(presented: str) -> str:
    return hashlib.sha256(presented.encode()).hexdigest()


def bearer(authorization: bytes | None) -> str:
    if not authorization:
        raise invalid_api_key(_MISSING_KEY)
    scheme, _, token = authorization.partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        raise invalid_api_key(_MISSING_KEY)
    try:
        return token.decode("ascii")
    except UnicodeDecodeError:
        raise invalid_api_key() from None


def masked(presented: str) -> str:
    return f"{presented[:6]}***{presented[-4:]}" if len(presented) > 12 else "***"


PgLookup = Callable[[str], Awaitable[dict[str, Any] | None]]


class KeyCache:
    """hash -> (expiry, record or None). Bounded; the oldest entries go first."""

    def __init__(self, ttl_s: float, negative_ttl_s: float, max_size: int) -> None:
        self.ttl = ttl_s
        self.negative_ttl = negative_ttl_s
        self.max_size = max_size
        self._entries: OrderedDict[str, tuple[float, KeyRecord | None]] = OrderedDict()

    def get(self, digest: str) -> tuple[bool, KeyRecord | None]:
        entry = self._entries.get(digest)
        if entry is None:
            return False, None
        if entry[0] < time.monotonic():
            self._entries.pop(digest, None)
            return False, None
        return True, entry[1]

    def put(self, digest: str, record: KeyRecord | None) -> None:
        ttl = self.ttl if record is not None else self.negative_ttl
        self._entries[digest] = (time.monotonic() + ttl, record)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def drop(self, digest: str) -> None:
        self._entries.pop(digest, None)

    def drop_customer(self, customer_id: str) -> None:
        for digest in [d for d, (_, r) in self._entries.items() if r is not None and r.customer_id == customer_id]:
            self._entries.pop(digest, None)


class FailureThrottle:
    """Per client address: after `limit` failed authentications within a minute, answer 429 at
    once, so guessing keys is slow and cheap for us."""

    def __init__(self, limit: int, window_s: float = 60.0, max_clients: int = 50_000) -> None:
        self.limit = limit
        self.window = window_s
        self.max_clients = max_clients
        self._clients: dict[str, list[float]] = {}  # ip -> [window start, failures]

    def check(self, ip: str) -> None:
        entry = self._clients.get(ip)
        if entry is None:
            return
        now = time.monotonic()
        if now - entry[0] >= self.window:
            del self._clients[ip]
            return
        if entry[1] >= self.limit:
            retry = max(1, int(entry[0] + self.window - now + 0.999))
            raise GatewayError(
                429, "Too many failed authentication attempts from your address; retry later.",
                "requests", "rate_limit_exceeded", headers=[(b"retry-after", str(retry).encode())],
            )

    def failed(self, ip: str) -> None:
        now = time.monotonic()
        entry = self._clients.get(ip)
        if entry is None or now - entry[0] >= self.window:
            if len(self._clients) >= self.max_clients:
                self._clients = {k: v for k, v in self._clients.items() if now - v[0] < self.window}
                if len(self._clients) >= self.max_clients:
                    self._clients.clear()
            self._clients[ip] = [now, 1.0]
        else:
            entry[1] += 1


class Authenticator:
    def __init__(self, redis_client: redis.Redis, pg_lookup: PgLookup, cache: KeyCache, throttle: FailureThrottle):
        self.redis = redis_client
        self.pg_lookup = pg_lookup
        self.cache = cache
        self.throttle = throttle

    async def authenticate(self, authorization: bytes | None, client_ip: str) -> KeyRecord:
        self.throttle.check(client_ip)
        try:
            presented = bearer(authorization)
        except GatewayError:
            self.throttle.failed(client_ip)
            raise
        digest = key_hash(presented)
        hit, record = self.cache.get(digest)
        if not hit:
            record = await self._lookup(digest)
            self.cache.put(digest, record)
        if record is None or record.status != "active" or not hmac.compare_digest(record.key_hash, digest):
            self.throttle.failed(client_ip)
            raise invalid_api_key(
                f"Incorrect API key provided: {masked(presented)}. You can find your API key in your account."
            )
        return record

    async def _lookup(self, digest: str) -> KeyRecord | None:
        fields = await self.redis.hgetall(api_key(digest))
        if fields:
            return record_from(digest, {_text(k): v for k, v in fields.items()})
        row = await self.pg_lookup(digest)
        return record_from(digest, row) if row else None
