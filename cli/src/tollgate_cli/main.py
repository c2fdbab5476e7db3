"""`tollgate`: the operator's command line. Each area registers its own sub-command group; every
command prints JSON with --json so operators can script it."""

from __future__ import annotations

import typer

from tollgate_cli import provision

app = typer.Typer(help="Tollgate operator CLI.", no_args_is_help=True, add_completion=False)
app.add_typer(provision.app, name="provision")


def _register_optional() -> None:
    """Groups whose modules exist are added; keeps this file free of per-area edits."""
    import importlib

    for module, name in (
        ("tollgate_cli.ledger_cmds", None),
        ("tollgate_cli.dodo_cmds", "dodo"),
        ("tollgate_cli.metering_cmds", "metering"),
        ("tollgate_cli.tier_cmds", "tier"),
        ("tollgate_cli.notifier_cmds", "notifier"),
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        if name is None:
            for sub_name, sub_app in mod.GROUPS.items():
                app.add_typer(sub_app, name=sub_name)
        else:
            app.add_typer(mod.app, name=name)


_register_optional()


if __name__ == "__main__":
    app()
