"""Alert templates (jinja2, in templates/): `<kind>.txt` holds the subject, the plain-text body
and the Slack text as blocks; `<kind>.html` is the HTML body (autoescaped). Rendering happens at
send time from the alert's stored context, so a template fix also applies to pending retries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from tollgate_money.units import cents_to_nanos, format_usd
from tollgate_notifier.settings import NotifierSettings


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str
    slack: str


def _slack_escape(value: object) -> str:
    """Slack mrkdwn treats &, < and > as control characters."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cents(value: int) -> str:
    return format_usd(cents_to_nanos(int(value)))


def _when(value: str | None) -> str:
    if not value:
        return ""
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M UTC")


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("tollgate_notifier", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["usd"] = lambda nanos: format_usd(int(nanos))
    env.filters["cents"] = _cents
    env.filters["sx"] = _slack_escape
    env.filters["when"] = _when
    return env


def topup_link(settings: NotifierSettings, customer_id: str | None) -> str:
    return settings.topup_url.replace("{customer_id}", quote(customer_id or "", safe=""))


def render(kind: str, context: dict[str, Any], settings: NotifierSettings) -> Rendered:
    env = environment()
    values = {
        "product": settings.product_name,
        "topup_url": topup_link(settings, context.get("customer_id")),
        **context,
    }
    text_tmpl = env.get_template(f"{kind}.txt")
    ctx = text_tmpl.new_context(values)

    def block(name: str) -> str:
        return "".join(text_tmpl.blocks[name](ctx)).strip()

    html = env.get_template(f"{kind}.html").render(values)
    return Rendered(subject=block("subject"), text=block("text") + "\n", html=html, slack=block("slack"))
