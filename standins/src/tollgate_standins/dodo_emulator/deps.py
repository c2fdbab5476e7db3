"""Shared request plumbing: the emulator instance, bearer auth, page-number paging."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, Query, Request

from .errors import ApiError
from .runtime import Emulator


def _emulator_of(request: Request) -> Emulator:
    emu: Emulator = request.app.state.emu
    return emu


async def get_emu(request: Request) -> Emulator:
    return _emulator_of(request)


Emu = Annotated[Emulator, Depends(get_emu)]


async def require_auth(request: Request) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "UNAUTHORIZED", "missing or malformed Authorization: Bearer <api key> header")
    expected = _emulator_of(request).settings.api_key
    if expected is not None and not hmac.compare_digest(token.encode(), expected.encode()):
        raise ApiError(401, "UNAUTHORIZED", "invalid API key")


class PageParams:
    def __init__(self, page_number: int, page_size: int) -> None:
        self.page_number = page_number
        self.page_size = page_size

    def slice(self, items: Sequence[Any]) -> list[Any]:
        start = self.page_number * self.page_size
        return list(items[start : start + self.page_size])


async def page_params(
    page_number: Annotated[int, Query(ge=0)] = 0,
    page_size: Annotated[int, Query(ge=1, le=100)] = 10,
) -> PageParams:
    return PageParams(page_number, page_size)


Page = Annotated[PageParams, Depends(page_params)]


def newest_first(items: Sequence[Any]) -> list[Any]:
    return list(reversed(items))
