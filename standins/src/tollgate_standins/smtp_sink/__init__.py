"""SMTP sink stand-in: aiosmtpd server + HTTP API over the messages it received."""

from .app import SinkState, SmtpSinkSettings, create_app

__all__ = ["SinkState", "SmtpSinkSettings", "create_app"]
