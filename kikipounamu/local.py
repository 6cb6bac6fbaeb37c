"""One machine's local state, for the embedded defaults: the folders under ``var/``,
the secret key, and the project's own Redis.

Settings only say where these are. The entry points that use them prepare them,
before anything else touches them: ``manage.py`` (the Redis only for commands that
talk to it), the ASGI and WSGI applications, Celery's worker and beat
(``kikipounamu.celery``), and the test suite (``tests/conftest.py``). Importing
settings starts nothing and writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from django.conf import settings
from django.core.management.utils import get_random_secret_key

from kikipounamu.redis_server import EmbeddedRedis
from kikipounamu.redis_server import ensure_embedded_redis

logger = logging.getLogger(__name__)

# manage.py commands that get their folders but not the embedded Redis from manage.py:
# those that never talk to Redis, and those that start and stop it themselves.
_NO_REDIS_COMMANDS = frozenset(
    {
        "changepassword",
        "check",
        "collectstatic",
        "createsuperuser",
        "diffsettings",
        "ensure_admin",
        "help",
        "makemigrations",
        "migrate",
        "redis",
        "runstack",
        "showmigrations",
        "sqlmigrate",
        "storagecheck",
        "telegram_check",
        "telegram_delete_webhook",
        "telegram_set_webhook",
        "version",
    }
)


def prepare(*, redis: bool = True) -> EmbeddedRedis | None:
    """Make the local state this process needs: ``var/`` and the static folder, the
    secret key (generated once and kept), and unless ``redis`` is False or REDIS_URL
    is set, the embedded Redis (started if it does not answer). Cheap when all is
    there already. The embedded Redis, if one is used (``started`` says whether this
    call started it)."""
    settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
    # Whitenoise warns about a STATIC_ROOT that does not exist.
    settings.STATIC_ROOT.mkdir(parents=True, exist_ok=True)
    if settings.SECRET_KEY_FILE is not None:
        settings.SECRET_KEY = _secret_key(settings.SECRET_KEY_FILE)
    if not redis or not settings.REDIS_EMBEDDED:
        return None
    return ensure_embedded_redis(settings.REDIS_DATA_DIR)


def command_needs_redis(argv: Sequence[str]) -> bool:
    """Whether ``manage.py`` with these arguments talks to Redis."""
    command = argv[1] if len(argv) > 1 else "help"
    return command not in _NO_REDIS_COMMANDS


def _secret_key(key_file: Path) -> str:
    # Stable across restarts (sessions, signed tokens), made on the first run.
    if not key_file.exists():
        key_file.write_text(get_random_secret_key())
        key_file.chmod(0o600)
        logger.info("generated a secret key in %s", key_file)
    return key_file.read_text().strip()
