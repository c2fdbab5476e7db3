"""The running emulator: settings, state, webhooks, faults, and the background loops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .credits import expire_due_grants
from .faults import FaultState
from .metering import run_deduction_pass
from .render import render_ref
from .settings import EmulatorSettings
from .state import Obj, State
from .webhooks import WebhookDispatcher

log = logging.getLogger("tollgate_standins.dodo_emulator")

_SAVE_INTERVAL_S = 0.25


class Emulator:
    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.state = State()
        self.faults = FaultState()
        self.webhooks = WebhookDispatcher(self)
        self._dirty = False
        self._tasks: list[asyncio.Task[None]] = []

    def render_ref(self, kind: str, ref_id: str) -> Obj:
        return render_ref(self, kind, ref_id)

    def mark_dirty(self) -> None:
        self._dirty = True

    # -- persistence -------------------------------------------------------------------------

    def load(self) -> None:
        if self.settings.state_file is not None:
            self.state = State.load(self.settings.state_file)

    def save(self) -> None:
        if self.settings.state_file is not None:
            self.state.save(self.settings.state_file)
        self._dirty = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.webhooks.start()
        self._tasks = [
            asyncio.create_task(self._every(self.settings.deduct_interval_s, self.background_pass),
                                name="dodo-emulator-deduction"),
        ]
        if self.settings.state_file is not None:
            self._tasks.append(asyncio.create_task(self._every(_SAVE_INTERVAL_S, self._save_if_dirty),
                                                   name="dodo-emulator-saver"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.webhooks.stop()
        self.save()

    def reset(self) -> None:
        self.webhooks.reset()
        self.state = State()
        self.faults = FaultState()
        self.mark_dirty()

    def background_pass(self) -> int:
        expire_due_grants(self)
        return run_deduction_pass(self)

    def _save_if_dirty(self) -> None:
        if self._dirty:
            self.save()

    @staticmethod
    async def _every(interval_s: float, work: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                work()
            except Exception:
                # A bad object must not stop deductions or saving for everything else.
                log.exception("background task failed")
