"""`python -m tollgate_gateway [serve|migrate] [--port P] [--workers N]`."""

from tollgate_gateway.settings import GatewaySettings
from tollgate_platform.service import main

if __name__ == "__main__":
    # The gateway owns no tables: it reads the ledger's and tier service's views.
    main("gateway", GatewaySettings, "tollgate_gateway.app:create_app_from_env", None, 8080)
