"""Typed access to the hot state's Lua scripts. One script call before the upstream (admit) and
one after (settle) is the gateway's whole Redis cost per request."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, Protocol

import redis.asyncio as redis

from tollgate_hotstate.keys import CustomerKeys

Mode = Literal["credits", "subscription", "free"]


def _script(name: str) -> str:
    return resources.files("tollgate_hotstate").joinpath("lua", f"{name}.lua").read_text()


@dataclass(frozen=True, slots=True)
class AdmitRequest:
    request_id: str
    model: str
    est_tokens: int  # prompt estimate + max output, for the TPM bucket
    input_cost: int  # nanos, worst case for the prompt
    out_per_m: int  # nanos per 1M output tokens of the requested model
    max_out: int  # output tokens asked for (or the model's maximum)
    min_out: int  # fewer affordable output tokens than this is a 402
    hold_ttl_ms: int
    list_worst: int  # list-price worst case, for the free plan's allowance
    check_rate: bool = True


@dataclass(frozen=True, slots=True)
class Admitted:
    mode: Mode
    max_out: int
    hold: int
    available_after: int
    rpm_limit: int
    rpm_left: int
    tpm_limit: int
    tpm_left: int
    plan: str | None
    served_model: str | None  # set when a plan decides the model (soft-cap fallback)


@dataclass(frozen=True, slots=True)
class RateLimited:
    kind: Literal["requests", "tokens"]
    retry_after_ms: int
    limit: int
    remaining: int
    reset_ms: int


@dataclass(frozen=True, slots=True)
class NoFunds:
    available: int
    free_left: int | None = None  # today's Free allowance left, when it could have paid


class NeedsLoad:
    pass


class Frozen:
    pass


AdmitResult = Admitted | RateLimited | NoFunds | NeedsLoad | Frozen


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ScriptHost(Protocol):
    """A pipelining client that runs Lua scripts like redis-py's `register_script`, and checks that
    a reply ending with the caller's request id (admit, settle) reached that caller: replies
    matched by position are only as good as the byte stream (see tollgate_gateway.resp)."""

    def register_script(self, script: str, *, tagged_by_first_arg: bool = False) -> Any: ...


class HotState:
    def __init__(self, client: redis.Redis, scripts: ScriptHost | None = None) -> None:
        self.redis = client
        host: ScriptHost | redis.Redis = scripts if scripts is not None else client
        if scripts is not None:
            # admit and settle end their replies with the request id (ARGV[1]).
            self._admit = scripts.register_script(_script("admit"), tagged_by_first_arg=True)
            self._settle = scripts.register_script(_script("settle"), tagged_by_first_arg=True)
        else:
            self._admit = client.register_script(_script("admit"))
            self._settle = client.register_script(_script("settle"))
        self._mirror = host.register_script(_script("mirror"))
        self._load = host.register_script(_script("load"))
        self._set_fields = host.register_script(_script("set_fields"))

    async def admit(self, customer_id: str, req: AdmitRequest) -> AdmitResult:
        k = CustomerKeys(customer_id)
        raw = await self._admit(
            keys=[k.acct, k.holds, k.holdexp, k.rl],
            args=[
                req.request_id, req.model, req.est_tokens, req.input_cost, req.out_per_m, req.max_out,
                req.min_out, req.hold_ttl_ms, "1" if req.check_rate else "0", req.list_worst,
            ],
        )
        verdict = _s(raw[0])
        if verdict == "OK":
            plan, _, served = _s(raw[9]).partition("|")
            return Admitted(
                mode=_s(raw[1]),  # type: ignore[arg-type]
                max_out=int(raw[2]), hold=int(raw[3]), available_after=int(raw[4]),
                rpm_limit=int(raw[5]), rpm_left=int(raw[6]), tpm_limit=int(raw[7]), tpm_left=int(raw[8]),
                plan=plan or None, served_model=served or None,
            )
        if verdict in ("RPM", "TPM"):
            return RateLimited(
                kind="requests" if verdict == "RPM" else "tokens",
                retry_after_ms=int(raw[1]), limit=int(raw[2]), remaining=int(raw[3]), reset_ms=int(raw[4]),
            )
        if verdict == "NOFUNDS":
            free_left = int(raw[2])
            return NoFunds(available=int(raw[1]), free_left=free_left if free_left >= 0 else None)
        if verdict == "FROZEN":
            return Frozen()
        return NeedsLoad()

    async def settle(
        self, customer_id: str, request_id: str, *, cost: int, mode: Mode, list_price: int,
        tokens_refund: int, event_json: bytes,
    ) -> tuple[int, bool]:
        """Returns (available after, whether this request had already been settled)."""
        k = CustomerKeys(customer_id)
        raw = await self._settle(
            keys=[k.acct, k.holds, k.holdexp, k.unposted, k.unposted_ev],
            args=[request_id, cost, mode, list_price, max(tokens_refund, 0), event_json],
        )
        return int(raw[0]), bool(int(raw[1]))

    async def mirror(self, customer_id: str, balance: int, seq: int, posted: list[str]) -> tuple[bool, int]:
        k = CustomerKeys(customer_id)
        raw = await self._mirror(keys=[k.acct, k.unposted, k.unposted_ev], args=[balance, seq, *posted])
        return bool(int(raw[0])), int(raw[1])

    async def load(self, customer_id: str, fields: dict[str, str | int]) -> bool:
        args: list[str | int] = []
        for name, value in fields.items():
            args += [name, value]
        k = CustomerKeys(customer_id)
        return bool(await self._load(keys=[k.acct, k.unposted], args=args))

    async def set_fields(
        self, customer_id: str, version_field: str, version: int, fields: dict[str, str | int]
    ) -> bool:
        args: list[str | int] = [version, version_field]
        for name, value in fields.items():
            args += [name, value]
        return bool(await self._set_fields(keys=[CustomerKeys(customer_id).acct], args=args))

    async def snapshot(self, customer_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(CustomerKeys(customer_id).acct)
        return {_s(k): _s(v) for k, v in raw.items()}

    async def available(self, customer_id: str) -> int | None:
        snap = await self.snapshot(customer_id)
        if "loaded" not in snap:
            return None
        return int(snap.get("bal", 0)) - int(snap.get("unposted", 0)) - int(snap.get("reserved", 0))


def create_redis(url: str, max_connections: int = 256) -> redis.Redis:
    """Bursts wait for a pooled connection instead of failing (redis-py's default pool raises)."""
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=5, health_check_interval=10, socket_keepalive=True
    )
    return redis.Redis(connection_pool=pool, decode_responses=False)
