"""One-time sign-in links an operator mints for a customer. The token is 32 random bytes; only
its SHA-256 is stored, and consuming it is one UPDATE, so it signs in once even if two tabs race."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

import asyncpg


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def mint(pool: asyncpg.Pool, customer_id: str, ttl_s: int) -> tuple[str, datetime]:
    token = secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + timedelta(seconds=ttl_s)
    await pool.execute(
        "INSERT INTO ledger.console_links (token_hash, customer_id, expires_at) VALUES ($1, $2, $3)",
        _hash(token), customer_id, expires_at,
    )
    return token, expires_at


async def peek(pool: asyncpg.Pool, token: str) -> asyncpg.Record | None:
    """Who the link is for, if it can still be used (showing it does not use it up: mail scanners
    and link previews fetch URLs, so only the POST from the page consumes the token)."""
    return await pool.fetchrow(
        "SELECT l.customer_id, c.name FROM ledger.console_links l JOIN ledger.customers c USING (customer_id) "
        "WHERE l.token_hash = $1 AND l.used_at IS NULL AND l.expires_at > now()",
        _hash(token),
    )


async def consume(pool: asyncpg.Pool, token: str) -> str | None:
    customer_id: str | None = await pool.fetchval(
        "UPDATE ledger.console_links SET used_at = now() WHERE token_hash = $1 AND used_at IS NULL "
        "AND expires_at > now() RETURNING customer_id",
        _hash(token),
    )
    return customer_id
