"""The console's session: a signed (itsdangerous), HttpOnly, SameSite=Lax cookie. It holds who is
signed in, the per-session CSRF token and one-shot flash messages; never a key or a token.

Signed, not encrypted: its content (a customer id, a key id) is not secret, only unforgeable.
Every visitor gets a session with a CSRF token before signing in, so the sign-in form itself is
protected; signing in issues a fresh session (new token), so a planted cookie cannot be carried
into an account. The lifetime is absolute from sign-in (`session_ttl_s`); writing a flash
message re-signs the cookie but does not extend it."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

COOKIE = "tollgate_console"
COOKIE_PATH = "/console"
Role = Literal["customer", "operator"]
Level = Literal["ok", "error", "info"]


@dataclass
class Session:
    csrf: str
    role: Role | None = None
    customer_id: str | None = None
    key_id: str | None = None  # the key a customer signed in with; revoking it ends the session
    fingerprint: str | None = None  # operator: which admin token; rotating it ends the session
    signed_in_at: float | None = None
    flash: list[tuple[Level, str]] = field(default_factory=list)
    dirty: bool = False

    def add_flash(self, level: Level, text: str) -> None:
        self.flash.append((level, text))
        self.dirty = True

    def take_flash(self) -> list[tuple[Level, str]]:
        messages, self.flash = self.flash, []
        if messages:
            self.dirty = True
        return messages

    def csrf_ok(self, submitted: object) -> bool:
        return isinstance(submitted, str) and hmac.compare_digest(submitted.encode(), self.csrf.encode())


def anonymous() -> Session:
    return Session(csrf=secrets.token_urlsafe(24), dirty=True)


class SessionCodec:
    def __init__(self, secret: bytes, ttl_s: int, secure: bool) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="tollgate-console-session")
        self._fingerprint_key = secret
        self.ttl_s = ttl_s
        self.secure = secure

    def fingerprint(self, admin_token: str) -> str:
        return hmac.new(self._fingerprint_key, admin_token.encode(), hashlib.sha256).hexdigest()[:24]

    def load(self, request: Request) -> Session:
        cached = request.scope.get("tollgate.console.session")
        if isinstance(cached, Session):
            return cached
        session = self._decode(request.cookies.get(COOKIE)) or anonymous()
        request.scope["tollgate.console.session"] = session
        return session

    def _decode(self, raw: str | None) -> Session | None:
        if not raw:
            return None
        try:
            data: dict[str, Any] = self._serializer.loads(raw, max_age=self.ttl_s)
        except BadSignature:  # also SignatureExpired: a stale cookie is simply no session
            return None
        try:
            session = Session(
                csrf=str(data["c"]), role=data.get("r"), customer_id=data.get("u"), key_id=data.get("k"),
                fingerprint=data.get("f"), signed_in_at=data.get("t"),
                flash=[(level, str(text)) for level, text in data.get("m", [])],
            )
        except (KeyError, TypeError, ValueError):
            return None
        if session.role is not None and (
            session.signed_in_at is None or time.time() - float(session.signed_in_at) > self.ttl_s
        ):
            return None
        return session

    def save(self, response: Response, session: Session) -> None:
        if not session.dirty:
            return
        payload = {
            "c": session.csrf, "r": session.role, "u": session.customer_id, "k": session.key_id,
            "f": session.fingerprint, "t": session.signed_in_at, "m": session.flash[-5:],
        }
        response.set_cookie(
            COOKIE, self._serializer.dumps(payload), max_age=self.ttl_s, path=COOKIE_PATH, httponly=True,
            samesite="lax", secure=self.secure,
        )
        session.dirty = False

    def start(self, request: Request, **who: Any) -> Session:
        """A fresh session for someone who just proved who they are (new CSRF token)."""
        session = Session(csrf=secrets.token_urlsafe(24), signed_in_at=time.time(), dirty=True, **who)
        request.scope["tollgate.console.session"] = session
        return session

    def end(self, request: Request) -> Session:
        session = anonymous()
        request.scope["tollgate.console.session"] = session
        return session
