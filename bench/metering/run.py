"""Metering benchmark: usage events/s from JetStream to the Dodo emulator, and the lag.

    uv run python bench/metering/run.py [--rates 10000,12500,15000,20000] [--seconds 10] [--preload 100000]

Everything runs on this machine, each in its own process: a private nats-server (JetStream on a
temp dir), the Dodo emulator (`python -m tollgate_standins.dodo_emulator`), the metering service
(`python -m tollgate_metering`, one replica, default settings) and a publisher
(bench/metering/publisher.py: JetStream publishes with the gateway's headers - Nats-Msg-Id,
Content-Type, traceparent - and PubAcks, many per socket write, like the gateway's publisher).

Two phases:
1. capacity: `--preload` events are published with metering stopped; metering is started and
   the time until the emulator holds all their Dodo events gives the drain rate.
2. steady: for each of `--rates`, the publisher paces that many events/s for `--seconds` with
   metering running. Reported:
   the rate Dodo received, and the lag = Dodo's 200 for the batch minus the usage's timestamp
   (set at publish), from metering's histogram (p50/p99 interpolated within buckets), plus a
   cross-check from outside: published-count vs. emulator-count curves sampled every 100 ms;
   and the CPU each process (publisher included) spent per usage event meanwhile.
Each usage event is 2 Dodo events (input and output meter). Bounded to about 2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from dodopayments import AsyncDodoPayments
from prometheus_client.parser import text_string_to_metric_families

from tollgate_dodo.bootstrap import BootstrapSettings, bootstrap
from tollgate_money import PriceBook
from tollgate_platform import bus

REPO = Path(__file__).resolve().parents[2]
PRICING = REPO / "config" / "pricing.toml"
API_KEY = "sk_test_bench"
LAG_METRIC = "tollgate_metering_delivery_lag_seconds"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.env, self.log = argv, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(  # noqa: S603 - our own fixed commands
            self.argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            proc.stop()


async def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url, timeout=1.0)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise TimeoutError(url)


async def emulator_events(client: httpx.AsyncClient, url: str) -> int:
    return int((await client.get(f"{url}/_emulator/stats")).json()["events"])


async def lag_histogram(client: httpx.AsyncClient, url: str) -> dict[float, float]:
    text = (await client.get(f"{url}/metrics")).text
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{LAG_METRIC}_bucket":
                buckets[float(sample.labels["le"])] = sample.value
    return buckets


async def metrics_text(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    text = (await client.get(f"{url}/metrics")).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("tollgate_metering_") and not sample.name.endswith("_bucket"):
                key = sample.name + "".join(f"{{{k}={v}}}" for k, v in sorted(sample.labels.items()))
                values[key] = sample.value
    return values


def quantile(buckets: dict[float, float], q: float) -> float:
    """Linear interpolation inside the cumulative histogram bucket that holds the quantile."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return 0.0
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 0.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return bounds[-1]


def curve_lag(published: list[tuple[float, int]], delivered: list[tuple[float, int]], q: float) -> float:
    """Lag of the k-th published event = when the emulator had k events' worth, minus when the
    k-th was published (order-insensitive approximation from two monotone curves)."""
    lags: list[float] = []
    d = 0
    for t_pub, count in published:
        while d < len(delivered) and delivered[d][1] < count:
            d += 1
        if d == len(delivered):
            break
        lags.append(max(delivered[d][0] - t_pub, 0.0))
    if not lags:
        return float("nan")
    lags.sort()
    return lags[min(int(q * len(lags)), len(lags) - 1)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to split the cost between processes."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pids(procs: list[Proc]) -> dict[str, int]:
    names = ("nats-server", "emulator", "metering")
    return {name: p.proc.pid for name, p in zip(names, procs, strict=False) if p.proc is not None}


def max_bound(buckets: dict[float, float]) -> float:
    """Upper bound of the bucket holding the largest observation."""
    total = buckets.get(float("inf"), 0.0)
    return min((b for b, v in buckets.items() if v >= total), default=0.0) if total else 0.0


async def steady_phase(
    http: httpx.AsyncClient, emu_url: str, metering_url: str, publisher: Any, work: Path, rate: float, seconds: float,
    procs: list[Proc],
) -> dict[str, Any]:
    count = int(rate * seconds)
    prefix = f"steady{int(rate)}"
    before = await lag_histogram(http, metering_url)
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids(procs).items()}
    base_events = await emulator_events(http, emu_url)
    proc = publisher(count, rate, prefix)
    t0 = time.monotonic()
    delivered: list[tuple[float, int]] = []
    while True:
        events = await emulator_events(http, emu_url) - base_events
        delivered.append((time.monotonic() - t0, events // 2))
        # A rate above capacity leaves a backlog: give it a bounded time to drain, then move on.
        if events >= 2 * count or time.monotonic() - t0 > seconds + 15:
            break
        await asyncio.sleep(0.1)
    proc.wait(60)
    cpu_used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids(procs).items()}
    after = await lag_histogram(http, metering_url)
    summary = json.loads((work / f"publisher-{prefix}.json").read_text())
    window = [d for d in delivered if d[0] <= summary["seconds"]]
    delta = {b: after[b] - before.get(b, 0.0) for b in after}
    # Rate at which Dodo received usage while the publisher ran (start-up and tail excluded).
    received = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]) if len(window) > 1 else 0.0
    return {
        "target_usage_events_per_s": rate,
        "published_usage_events": summary["count"],
        "published_per_s": round(summary["count"] / summary["seconds"]),
        "received_usage_events_per_s": round(received),
        "received_dodo_events_per_s": round(2 * received),
        "delivered_usage_events": delivered[-1][1],
        "backlog_drained": delivered[-1][1] >= count,
        "lag_p50_s": round(quantile(delta, 0.50), 3),
        "lag_p99_s": round(quantile(delta, 0.99), 3),
        "lag_max_le_s": max_bound(delta),
        "curve_lag_p99_s": round(curve_lag([(t, c) for t, c in summary["timeline"]], delivered, 0.99), 3),
        "cpu_us_per_usage_event": {
            **{k: round(v / count * 1e6, 1) for k, v in cpu_used.items()},
            "publisher": round(summary.get("cpu_seconds", 0.0) / count * 1e6, 1),
        },
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="tollgate-bench-metering-"))
    nats_port, emu_port, metering_port = free_port(), free_port(), free_port()
    nats_url = f"nats://127.0.0.1:{nats_port}"
    emu_url = f"http://127.0.0.1:{emu_port}"
    catalogue = work / "catalogue.json"
    customers_file = work / "customers.json"
    py = sys.executable
    result: dict[str, Any] = {}
    with processes() as procs:
        nats_bin = shutil.which("nats-server") or "nats-server"
        procs.append(Proc([nats_bin, "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", str(work / "nats")], {},
                          work / "nats.log"))
        procs.append(Proc([py, "-m", "tollgate_standins.dodo_emulator"], {
            "DODO_EMULATOR_PORT": str(emu_port), "DODO_EMULATOR_PUBLIC_URL": emu_url,
            "DODO_EMULATOR_DEDUCT_INTERVAL_S": "3600", "DODO_EMULATOR_LOG_LEVEL": "warning",
        }, work / "emulator.log"))
        for proc in procs:
            proc.start()
        await wait_http(f"{emu_url}/healthz")
        nc = await bus.connect(nats_url, "bench")
        await bus.provision(nc.jetstream())
        await nc.close()

        dodo = AsyncDodoPayments(bearer_token=API_KEY, base_url=emu_url, max_retries=0)
        await bootstrap(dodo, PriceBook.load(PRICING), BootstrapSettings(
            dodo_base_url=emu_url, dodo_api_key=API_KEY, dodo_catalogue_file=catalogue,
        ))
        customers = [
            (await dodo.customers.create(email=f"b{i}@example.com", name=f"Bench {i}")).customer_id
            for i in range(args.customers)
        ]
        await dodo.close()
        customers_file.write_text(json.dumps(customers))

        def publisher(count: int, rate: float, prefix: str) -> subprocess.Popen[bytes]:
            out = work / f"publisher-{prefix}.json"
            return subprocess.Popen([py, str(Path(__file__).with_name("publisher.py")), "--nats", nats_url,  # noqa: S603
                                     "--customers", str(customers_file), "--pricing", str(PRICING),
                                     "--count", str(count), "--rate", str(rate), "--prefix", prefix,
                                     "--out", str(out)])

        # Phase 1: capacity (drain a preloaded backlog).
        pre = publisher(args.preload, 0, "pre")
        pre.wait(120)
        preload = json.loads((work / "publisher-pre.json").read_text())
        metering_env = {
            "NATS_URL": nats_url, "DODO_PAYMENTS_BASE_URL": emu_url, "DODO_PAYMENTS_API_KEY": API_KEY,
            "TOLLGATE_DODO_CATALOGUE_FILE": str(catalogue), "LOG_LEVEL": "WARNING",
        }
        metering = Proc([py, "-m", "tollgate_metering", "serve", "--port", str(metering_port)], metering_env,
                        work / "metering.log")
        procs.append(metering)
        metering_url = f"http://127.0.0.1:{metering_port}"
        async with httpx.AsyncClient(timeout=10) as http:
            metering.start()
            await wait_http(f"{metering_url}/readyz")
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids(procs).items()}
            started = time.monotonic()
            target = 2 * args.preload
            while await emulator_events(http, emu_url) < target:
                if time.monotonic() - started > 120:
                    raise TimeoutError("capacity phase did not finish in 120 s")
                await asyncio.sleep(0.05)
            drain_s = time.monotonic() - started
            cpu_used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids(procs).items()}
            result["capacity"] = {
                "usage_events": args.preload,
                "dodo_events": target,
                "seconds": round(drain_s, 2),
                "usage_events_per_s": round(args.preload / drain_s),
                "dodo_events_per_s": round(target / drain_s),
                "publisher_preload_per_s": round(preload["count"] / preload["seconds"]),
                "publisher_cpu_us_per_usage_event": round(preload.get("cpu_seconds", 0.0) / args.preload * 1e6, 1),
                # CPU each process spent per usage event while draining: what one core would sustain.
                "cpu_us_per_usage_event": {k: round(v / args.preload * 1e6, 1) for k, v in cpu_used.items()},
            }

            # Phase 2: steady load at each --rates value with metering running.
            result["steady"] = []
            for rate in args.rates:
                result["steady"].append(
                    await steady_phase(http, emu_url, metering_url, publisher, work, rate, args.seconds, procs)
                )
            result["metering_metrics"] = {
                k: v for k, v in (await metrics_text(http, metering_url)).items()
                if any(s in k for s in ("retries", "dead_letters", "batch_events_count", "batch_events_sum",
                                         "naks", "splits", "usage_acked"))
            }
    result["machine"] = {
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "processor": _cpu_model(), "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
    }
    shutil.rmtree(work, ignore_errors=True)
    return result


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=lambda v: [float(x) for x in v.split(",")],
                        default=[10_000, 12_500, 15_000, 20_000],
                        help="comma-separated usage events/s for the steady phases")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--preload", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=100)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
