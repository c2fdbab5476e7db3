"""The official Dodo SDK client, configured from Tollgate's settings (base URL or environment)."""

from __future__ import annotations

from dodopayments import AsyncDodoPayments

from tollgate_platform.settings import ServiceSettings


def create_client(settings: ServiceSettings, *, max_retries: int = 2, timeout: float = 30.0) -> AsyncDodoPayments:
    kwargs: dict[str, object] = {}
    if settings.dodo_base_url:
        kwargs["base_url"] = settings.dodo_base_url
    elif settings.dodo_environment:
        kwargs["environment"] = settings.dodo_environment
    return AsyncDodoPayments(
        bearer_token=settings.dodo_api_key.get_secret_value(),
        webhook_key=settings.dodo_webhook_key.get_secret_value(),
        max_retries=max_retries,
        timeout=timeout,
        **kwargs,  # type: ignore[arg-type]
    )
