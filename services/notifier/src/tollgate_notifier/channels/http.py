"""Shared HTTP outcome rules for Slack and generic webhooks."""

from __future__ import annotations

import httpx

from tollgate_notifier.channels.base import PermanentError, TransientError

# Worth retrying: timeouts, conflicts, "too early", rate limits; every 5xx is handled below.
_RETRYABLE_4XX = {408, 409, 425, 429}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


async def post(client: httpx.AsyncClient, url: str, *, what: str, **kwargs: object) -> None:
    """POST and classify. Errors name the channel and status, never the URL (it is a secret)."""
    try:
        response = await client.post(url, **kwargs)  # type: ignore[arg-type]
    except httpx.TimeoutException as exc:
        raise TransientError(f"{what}: timeout ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise TransientError(f"{what}: {type(exc).__name__}") from exc
    if response.is_success:
        return
    body = response.text[:200]
    detail = f"{what}: HTTP {response.status_code} {body}".strip()
    if response.status_code >= 500 or response.status_code in _RETRYABLE_4XX:
        raise TransientError(detail, retry_after_s=_retry_after(response))
    raise PermanentError(detail)
