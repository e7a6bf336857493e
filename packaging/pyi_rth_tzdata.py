# PyInstaller runtime hook (see aiki-server.spec): put the bundled time zone database on sys.path.
#
# zoneinfo looks in the system's /usr/share/zoneinfo first and falls back to the `tzdata` package.
# That package is about 600 small files; a one-file binary would write every one of them to disk
# at each start (most of its start-up time). Shipped as one zip instead, zipimport serves the
# package and importlib.resources reads the zone files straight from the zip.
import os
import sys

sys.path.append(os.path.join(sys._MEIPASS, "tzdata.zip"))  # type: ignore[attr-defined]
