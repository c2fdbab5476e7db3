"""`python -m tollgate_tier [serve|migrate] [--port P]`."""

from tollgate_platform.service import main
from tollgate_tier.app import MIGRATIONS_DIR
from tollgate_tier.settings import TierSettings

if __name__ == "__main__":
    main("tier", TierSettings, "tollgate_tier.app:create_app_from_env", MIGRATIONS_DIR, 8082)
