"""A local emulator of the Dodo Payments HTTP API (stand-in for development and tests).

Production services never import this package; they reach it over HTTP through the official
`dodopayments` SDK, pointed at it by base URL.
"""

from .app import create_app
from .settings import EmulatorSettings

__all__ = ["EmulatorSettings", "create_app"]
