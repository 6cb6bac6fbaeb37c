"""Test settings: the real settings, pointed at test-only Redis keys, media and database.

Each pytest run gets a run id, so two runs at once (a developer's and CI's, or two
developers on one machine) never share a database, a queue or a media folder.
Subprocesses that tests start (web server, Celery workers) inherit the run id and set
KIKI_TEST_SUBPROCESS=1, so they open the test database that pytest-django made.
"""

import os
import uuid
from pathlib import Path

_VAR = Path(__file__).resolve().parent.parent / "var"
RUN_ID = os.environ.setdefault("KIKI_TEST_RUN", uuid.uuid4().hex[:8])
# Database 15 of the project's own Redis: never the queues of a running system.
os.environ.setdefault("KIKI_REDIS_DB", "15")
os.environ.setdefault("MEDIA_ROOT", str(_VAR / "test-media" / RUN_ID))
os.environ.setdefault("DATABASE_TEST_NAME", str(_VAR / f"test-{RUN_ID}.sqlite3"))

from kikipounamu.settings import *  # noqa: E402,F403
from kikipounamu.settings import CACHES  # noqa: E402
from kikipounamu.settings import CELERY_BROKER_TRANSPORT_OPTIONS  # noqa: E402
from kikipounamu.settings import CHANNEL_LAYERS  # noqa: E402
from kikipounamu.settings import DATABASES  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Every broker key of this run (queues, unacked messages) carries its run id.
# A module that runs its own web and workers gives them a namespace, so that the
# session's worker cannot take their jobs (and theirs cannot take the session's).
REDIS_KEY_PREFIX = f"kiki-test-{RUN_ID}{os.environ.get('KIKI_TEST_NAMESPACE', '')}:"
CELERY_BROKER_TRANSPORT_OPTIONS = {
    **CELERY_BROKER_TRANSPORT_OPTIONS,
    "global_keyprefix": REDIS_KEY_PREFIX,
}

CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = f"{REDIS_KEY_PREFIX}asgi"
# Throttle counters (the shared cache) of this run only.
CACHES["default"]["KEY_PREFIX"] = f"{REDIS_KEY_PREFIX}cache"

_db = DATABASES["default"]
if _db["ENGINE"] != "django.db.backends.sqlite3":
    _db["TEST"] = {"NAME": f"test_{_db['NAME']}_{RUN_ID}"}
if os.environ.get("KIKI_TEST_SUBPROCESS"):
    _db["NAME"] = _db["TEST"]["NAME"]
else:
    # pytest's own process runs ASGI apps and consumers in threads it does not
    # join; a connection kept there would stop PostgreSQL from dropping the test
    # database at the end. The servers the tests start keep theirs, as in use.
    _db["CONN_MAX_AGE"] = 0
