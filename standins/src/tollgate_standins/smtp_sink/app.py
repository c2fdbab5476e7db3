"""SMTP sink: an aiosmtpd server storing every message in memory, plus an HTTP API to read them.

Both listeners live in one asyncio loop: the SMTP server is started and stopped by the HTTP app's
lifespan, so `uvicorn` (or any ASGI test harness that runs lifespans) runs the whole sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import hmac
import itertools
import time
import warnings
import weakref
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

REFUSAL = "421 4.3.2 Service not available, closing transmission channel"


class SmtpSinkSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SMTP_SINK_", extra="ignore")

    host: str = "127.0.0.1"
    smtp_port: int = 1025
    http_port: int = 8025
    log_level: str = "warning"
    # Fixed name: the default (socket.getfqdn) can block on DNS for seconds on an offline box.
    hostname: str = "smtp-sink.local"
    # When both are set, AUTH PLAIN/LOGIN is offered and only these credentials pass. This sink
    # allows AUTH over plain TCP (no STARTTLS) so the notifier's auth path can be exercised locally;
    # a real relay must never be configured like that.
    auth_username: str | None = None
    auth_password: str | None = None
    auth_required: bool = False
    max_messages: int = Field(default=1000, ge=1)


class SinkState:
    def __init__(self, max_messages: int) -> None:
        self.messages: list[dict[str, Any]] = []
        self.max_messages = max_messages
        self.refuse_until = 0.0
        self.refused = 0
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()

    def refusing(self) -> bool:
        return time.monotonic() < self.refuse_until

    def add(self, message: dict[str, Any]) -> None:
        message["id"] = next(self._ids)
        self.messages.append(message)
        if len(self.messages) > self.max_messages:
            del self.messages[0]
        # Wake every long-poller, then re-arm for the next message.
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()


class _Handler:
    """aiosmtpd hooks; a hook that exists must also record what it accepted on the envelope."""

    def __init__(self, state: SinkState) -> None:
        self.state = state

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if self.state.refusing():
            self.state.refused += 1
            return REFUSAL
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if self.state.refusing():
            self.state.refused += 1
            return REFUSAL
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.state.refusing():
            self.state.refused += 1
            return REFUSAL
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode()
        self.state.add(_to_record(raw, envelope, session))
        return "250 OK: message accepted"


def _to_record(raw: bytes, envelope: Envelope, session: Session) -> dict[str, Any]:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    text: str | None = None
    html: str | None = None
    attachments: list[str] = []
    if isinstance(parsed, EmailMessage):
        for part in parsed.walk():
            if part.is_multipart():
                continue
            if part.get_content_disposition() == "attachment":
                attachments.append(part.get_filename() or "")
                continue
            ctype = part.get_content_type()
            if ctype == "text/plain" and text is None:
                text = str(part.get_content())
            elif ctype == "text/html" and html is None:
                html = str(part.get_content())
    headers: dict[str, str] = {}
    for key, value in parsed.items():
        headers.setdefault(key, str(value))
    auth = session.auth_data
    login = auth.login if isinstance(auth, LoginPassword) else None
    return {
        "from": envelope.mail_from,
        "to": list(envelope.rcpt_tos),
        "subject": headers.get("Subject"),
        "text": text,
        "html": html,
        "attachments": attachments,
        "headers": headers,
        "received_at": datetime.now(UTC).isoformat(),
        "peer": list(session.peer) if isinstance(session.peer, tuple) else session.peer,
        "auth_login": login.decode() if isinstance(login, bytes) else login,
        "raw": raw.decode("utf-8", "replace"),
    }


def _authenticator(settings: SmtpSinkSettings) -> Any:
    user = (settings.auth_username or "").encode()
    password = (settings.auth_password or "").encode()

    def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and hmac.compare_digest(auth_data.login, user)
            and hmac.compare_digest(auth_data.password, password)
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return check


async def start_smtp(
    settings: SmtpSinkSettings, state: SinkState, sessions: weakref.WeakSet[SMTP] | None = None
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    handler = _Handler(state)
    with_auth = settings.auth_username is not None and settings.auth_password is not None

    def factory() -> SMTP:
        # aiosmtpd warns on every connection when AUTH is required without TLS; that is this
        # sink's documented, deliberate configuration.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            protocol = SMTP(
                handler,
                hostname=settings.hostname,
                loop=loop,
                authenticator=_authenticator(settings) if with_auth else None,
                auth_require_tls=not with_auth,
                auth_required=with_auth and settings.auth_required,
            )
        if sessions is not None:
            sessions.add(protocol)
        return protocol

    return await loop.create_server(factory, host=settings.host, port=settings.smtp_port)


def create_app(settings: SmtpSinkSettings | None = None) -> Starlette:
    cfg = settings or SmtpSinkSettings()
    holder: dict[str, SinkState] = {}

    def current() -> SinkState:
        return holder["state"]

    async def list_messages(request: Request) -> Response:
        state = current()
        wait_ms = int(request.query_params.get("wait_ms", "0"))
        min_count = int(request.query_params.get("min_count", "1"))
        if wait_ms > 0:
            await state.wait_for(min_count, wait_ms / 1000)
        messages = state.messages
        to = request.query_params.get("to")
        if to:
            messages = [m for m in messages if any(to.lower() in r.lower() for r in m["to"])]
        return JSONResponse(messages)

    async def clear_messages(request: Request) -> Response:
        state = current()
        deleted = len(state.messages)
        state.messages.clear()
        return JSONResponse({"deleted": deleted})

    def refuse_status() -> dict[str, Any]:
        state = current()
        left = max(0.0, state.refuse_until - time.monotonic())
        return {"refusing": left > 0, "seconds_left": round(left, 3), "refused": state.refused}

    async def refuse(request: Request) -> Response:
        state = current()
        if request.method == "DELETE":
            state.refuse_until = 0.0
            return JSONResponse(refuse_status())
        if request.method == "POST":
            try:
                body = await request.json()
                seconds = body.get("seconds", 60) if isinstance(body, dict) else None
            except ValueError:
                seconds = None
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
                return JSONResponse({"error": 'body must be {"seconds": <non-negative number>}'}, 400)
            state.refuse_until = time.monotonic() + seconds
        return JSONResponse(refuse_status())

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "smtp_port": request.app.state.smtp_port})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state = SinkState(cfg.max_messages)
        holder["state"] = state
        sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        server = await start_smtp(cfg, state, sessions)
        app.state.sink = state
        app.state.smtp_port = server.sockets[0].getsockname()[1]
        try:
            yield
        finally:
            server.close()
            # Server.close() leaves accepted sessions open; a client mid-conversation would hang.
            for session in list(sessions):
                if session.transport is not None:
                    session.transport.close()

    return Starlette(
        routes=[
            Route("/messages", list_messages, methods=["GET"]),
            Route("/messages", clear_messages, methods=["DELETE"]),
            Route("/_sink/refuse", refuse, methods=["GET", "POST", "DELETE"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
