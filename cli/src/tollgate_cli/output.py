"""One way to print results: a readable table/line for people, or JSON with --json."""

from __future__ import annotations

import json
from typing import Any

import typer


def emit(data: Any, as_json: bool, human: str | None = None) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str, sort_keys=True))
    else:
        typer.echo(human if human is not None else json.dumps(data, indent=2, default=str))


def fail(message: str, as_json: bool, code: int = 1) -> None:
    if as_json:
        typer.echo(json.dumps({"error": message}), err=True)
    else:
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
