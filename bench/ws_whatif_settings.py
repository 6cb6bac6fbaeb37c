"""Settings for bench/websockets.py --what-if: never part of the project.

The project's settings, with the changes named in KIKI_WS_WHAT_IF applied, so that a
proposed change can be measured before anyone edits the project:

  connmaxage  CONN_MAX_AGE for SQLite too: channels' database_sync_to_async closes the
              connection after every call unless it is persistent, so every consumer
              opens a fresh SQLite connection (and runs the PRAGMAs) per snapshot.
"""

import os

from kikipounamu.settings import *  # noqa: F403
from kikipounamu.settings import DATABASES

WHAT_IF = [w for w in os.environ.get("KIKI_WS_WHAT_IF", "").split(",") if w]

if "connmaxage" in WHAT_IF:
    DATABASES["default"]["CONN_MAX_AGE"] = 60
