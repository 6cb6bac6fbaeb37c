"""Test settings: the real settings, pointed at test-only Redis, media and database.

Subprocesses that tests start (web server, Celery workers) load this module too, with
KIKI_TEST_SUBPROCESS=1 so that they open the test database that pytest-django made.
"""

import os
from pathlib import Path

_VAR = Path(__file__).resolve().parent.parent / "var"
# Database 15 of the project's own Redis: never the queues of a running system.
os.environ.setdefault("KIKI_REDIS_DB", "15")
os.environ.setdefault("MEDIA_ROOT", str(_VAR / "test-media"))

from kikipounamu.settings import *  # noqa: E402,F403
from kikipounamu.settings import DATABASES  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

_db = DATABASES["default"]
if _db["ENGINE"] != "django.db.backends.sqlite3":
    _db["TEST"] = {"NAME": f"test_{_db['NAME']}"}
if os.environ.get("KIKI_TEST_SUBPROCESS"):
    _db["NAME"] = _db["TEST"]["NAME"]
