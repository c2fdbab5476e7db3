from tollgate_metering.settings import MeteringSettings
from tollgate_platform.service import main

if __name__ == "__main__":
    main("metering", MeteringSettings, "tollgate_metering.app:create_app_from_env", None, 8083)
