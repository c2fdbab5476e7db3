"""Tollgate notifier: low-balance, depleted, soft-cap, tier, receipt and operator alerts, sent once
per crossing per channel by email, Slack and signed webhook."""
