"""Process entry point and state persistence across restarts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from dodo_emulator_kit import run_emulator, wait_for


def test_state_file_survives_a_restart(tmp_path: Path) -> None:
    state_file = tmp_path / "dodo-state.json"
    with run_emulator(state_file=state_file) as emu:
        customer = emu.sdk().customers.create(email="keep@example.com", name="Keep")
        ce = emu.sdk().credit_entitlements.create(name="c", overage_enabled=False, precision=0,
                                                  rollover_enabled=False, unit="u")
        emu.sdk().credit_entitlements.balances.create_ledger_entry(
            customer.customer_id, credit_entitlement_id=ce.id, amount="7", entry_type="credit")
    assert state_file.exists()
    with run_emulator(state_file=state_file) as emu:
        assert emu.sdk().customers.retrieve(customer.customer_id).email == "keep@example.com"
        balance = emu.sdk().credit_entitlements.balances.retrieve(customer.customer_id, credit_entitlement_id=ce.id)
        assert balance.balance == "7"


def test_python_dash_m_serves_the_api() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, DODO_EMULATOR_PORT=str(port), DODO_EMULATOR_LOG_LEVEL="warning")
    proc = subprocess.Popen([sys.executable, "-m", "tollgate_standins.dodo_emulator"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=20, what="emulator process")
        assert httpx.get(f"http://127.0.0.1:{port}/customers").status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=10)
