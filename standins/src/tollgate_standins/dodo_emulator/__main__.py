"""`python -m tollgate_standins.dodo_emulator`: serve the emulator with uvicorn."""

from __future__ import annotations

import uvicorn

from .app import create_app
from .settings import EmulatorSettings


def main() -> None:
    settings = EmulatorSettings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)


if __name__ == "__main__":
    main()
