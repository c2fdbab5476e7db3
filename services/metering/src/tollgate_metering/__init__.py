"""Metering: delivers every `usage.recorded` event to Dodo exactly once in effect."""
