"""Platform code every Tollgate service shares: settings, logging, telemetry, bus, storage, ops HTTP."""
