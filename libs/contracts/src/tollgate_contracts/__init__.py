"""Tollgate's message contracts: subjects, streams, durable consumers and versioned event schemas."""

from tollgate_contracts import events, streams, subjects

__all__ = ["events", "streams", "subjects"]
