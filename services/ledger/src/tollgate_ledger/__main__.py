"""`python -m tollgate_ledger [serve|migrate] [--port P]`."""

from tollgate_ledger import MIGRATIONS_DIR
from tollgate_ledger.settings import LedgerSettings
from tollgate_platform.service import main

if __name__ == "__main__":
    main("ledger", LedgerSettings, "tollgate_ledger.app:create_app_from_env", MIGRATIONS_DIR, 8081)
