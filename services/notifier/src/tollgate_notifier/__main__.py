"""`python -m tollgate_notifier [serve|migrate] [--port 8084]`."""

from tollgate_notifier.app import MIGRATIONS_DIR
from tollgate_notifier.settings import NotifierSettings
from tollgate_platform.service import main


def run() -> None:
    main("notifier", NotifierSettings, "tollgate_notifier.app:create_app_from_env", MIGRATIONS_DIR, 8084)


if __name__ == "__main__":
    run()
