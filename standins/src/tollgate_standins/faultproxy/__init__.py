"""Toxiproxy-like asyncio TCP fault proxy, in-process (`FaultProxy`) or as a process with an
HTTP control API (`python -m tollgate_standins.faultproxy`)."""

from .app import FaultProxySettings, create_app, create_control_app
from .proxy import FaultProxy, ToxicError, Toxics

__all__ = ["FaultProxy", "FaultProxySettings", "ToxicError", "Toxics", "create_app", "create_control_app"]
