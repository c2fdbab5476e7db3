"""Slack incoming-webhook sink and generic (Standard Webhooks) receiver stand-in."""

from .app import SlackSinkSettings, create_app

__all__ = ["SlackSinkSettings", "create_app"]
