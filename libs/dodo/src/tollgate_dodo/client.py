"""The official Dodo SDK client, configured from Tollgate's settings (base URL or environment)."""

from __future__ import annotations

import httpx
from dodopayments import AsyncDodoPayments, DefaultAsyncHttpxClient
from opentelemetry.sdk.trace import TracerProvider

from tollgate_platform.settings import ServiceSettings


def create_client(
    settings: ServiceSettings,
    *,
    max_retries: int = 2,
    timeout: float = 30.0,
    tracer_provider: TracerProvider | None = None,
    max_connections: int | None = None,
) -> AsyncDodoPayments:
    """With a tracer provider, every HTTP call is a client span carrying `traceparent` to Dodo, so a
    trace continues from whatever span is current when the call is made."""
    kwargs: dict[str, object] = {}
    if settings.dodo_base_url:
        kwargs["base_url"] = settings.dodo_base_url
    elif settings.dodo_environment:
        kwargs["environment"] = settings.dodo_environment
    if tracer_provider is not None or max_connections is not None:
        limits = httpx.Limits(max_connections=max_connections or 100, max_keepalive_connections=max_connections or 20)
        http_client = DefaultAsyncHttpxClient(limits=limits)
        if tracer_provider is not None:
            from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

            HTTPXClientInstrumentor.instrument_client(http_client, tracer_provider=tracer_provider)
        kwargs["http_client"] = http_client
    return AsyncDodoPayments(
        bearer_token=settings.dodo_api_key.get_secret_value(),
        webhook_key=settings.dodo_webhook_key.get_secret_value(),
        max_retries=max_retries,
        timeout=timeout,
        **kwargs,  # type: ignore[arg-type]
    )
