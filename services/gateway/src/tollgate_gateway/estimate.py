"""The worst case of a request before it runs: an upper bound of its prompt tokens.

Rule (docs/gateway.md, "Worst case"):
- Bodies up to `exact_bound_max_bytes`: the body's UTF-8 byte length. Every token of a BPE
  tokenizer is at least one byte of text, and the JSON around the text (quotes, keys, roles)
  is longer than the chat framing tokens it stands for, so this is a true upper bound, and costs
  nothing to compute. Image parts are replaced by a fixed allowance (`image_token_allowance`).
- Larger bodies: every string in the body is counted with the offline tokenizer, plus 4 tokens
  per string, plus `tokenizer_margin_pct` and 64 tokens. An estimate, not a proof: an upstream
  whose tokenizer differs a lot could exceed it; the charge is then capped at the hold.
- Responses with `previous_response_id`/`conversation`: earlier turns are added upstream and
  are invisible here, so the bound is the model's whole context window.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from tollgate_gateway import tokens

_IMAGE_PART_TYPES = frozenset({"image_url", "input_image"})
_THREAD_ABOVE_BYTES = 256 * 1024


@dataclass(slots=True)
class _Scan:
    texts: list[str] = field(default_factory=list)
    token_ids: int = 0
    strings: int = 0
    images: int = 0
    media_bytes: int = 0


def _walk(value: Any, scan: _Scan, in_image: bool = False) -> None:
    if isinstance(value, str):
        if value.startswith("data:image/"):
            scan.media_bytes += len(value)
            scan.images += 0 if in_image else 1
            return
        scan.texts.append(value)
        scan.strings += 1
    elif isinstance(value, dict):
        image = value.get("type") in _IMAGE_PART_TYPES
        if image and not in_image:
            scan.images += 1
        for key, item in value.items():
            scan.texts.append(key)
            scan.strings += 1
            _walk(item, scan, in_image or image)
    elif isinstance(value, list):
        if value and all(type(v) is int for v in value):
            scan.token_ids += len(value)
            return
        for item in value:
            _walk(item, scan, in_image)


def _tokenized(scan: _Scan, margin_pct: int) -> int:
    counted = tokens.count_all(scan.texts) + scan.token_ids + 4 * scan.strings
    return counted + counted * margin_pct // 100 + 64


async def prompt_bound(
    raw: bytes, body: dict[str, Any], *, exact_max_bytes: int, margin_pct: int, image_allowance: int,
    context_window: int, stateful: bool,
) -> int:
    if stateful:
        return max(context_window, len(raw))
    has_media = b"image" in raw
    if len(raw) <= exact_max_bytes and not has_media:
        return len(raw)
    scan = _Scan()
    _walk(body, scan)
    if len(raw) <= exact_max_bytes:
        return len(raw) - scan.media_bytes + scan.images * image_allowance
    if len(raw) > _THREAD_ABOVE_BYTES:
        # tiktoken releases the GIL: a multi-megabyte prompt does not stall other requests.
        counted = await asyncio.to_thread(_tokenized, scan, margin_pct)
    else:
        counted = _tokenized(scan, margin_pct)
    return counted + scan.images * image_allowance
