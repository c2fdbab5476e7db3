"""Tollgate's ledger: the system of record for customers, API keys and money."""

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

__all__ = ["MIGRATIONS_DIR"]
