"""Settings for kikipounamu.

Every value comes from the environment (django-environ); the defaults are the embedded
single-machine defaults (SQLite under var/, the project's own Redis, the offline
`whisper` engine). Production changes environment variables only; each one is listed
in .env.example.
"""

from __future__ import annotations

import socket
from pathlib import Path

import environ

from kikipounamu.redis_server import embedded_port_from_env
from kikipounamu.redis_server import ensure_embedded_redis

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A .env file is optional; real environment variables win over it.
env.read_env(str(BASE_DIR / ".env"), overwrite=False)

# An empty value means the default, so a copied .env.example changes nothing.
VAR_DIR = Path(env.str("KIKI_VAR_DIR", default="") or BASE_DIR / "var")
VAR_DIR.mkdir(parents=True, exist_ok=True)

# https://docs.djangoproject.com/en/5.2/ref/settings/#debug
DEBUG = env.bool("DJANGO_DEBUG", default=False)


def _local_secret_key() -> str:
    # A fresh machine needs no set-up, yet the key must be stable across restarts
    # (sessions, signed tokens): generate it once and keep it under var/.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        from django.core.management.utils import get_random_secret_key

        path.write_text(get_random_secret_key())
        path.chmod(0o600)
    return path.read_text().strip()


# https://docs.djangoproject.com/en/5.2/ref/settings/#secret-key
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="") or _local_secret_key()
# https://docs.djangoproject.com/en/5.2/ref/settings/#allowed-hosts
ALLOWED_HOSTS = env.list(
    "DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"]
)
# https://docs.djangoproject.com/en/5.2/ref/settings/#csrf-trusted-origins
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "channels",
    "asr",
    "bots",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (admin, the upload page) from the app itself: no separate server
    # needed on one machine. https://whitenoise.readthedocs.io/en/stable/django.html
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "kikipounamu.urls"
WSGI_APPLICATION = "kikipounamu.wsgi.application"
ASGI_APPLICATION = "kikipounamu.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database ----------------------------------------------------------------------------
# https://docs.djangoproject.com/en/5.2/ref/settings/#databases
DATABASES = {
    "default": env.db_url_config(
        env.str("DATABASE_URL", default="") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
    ),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web process and the workers write concurrently: WAL lets readers go on
    # while one writes, IMMEDIATE transactions take the write lock up front (no
    # "database is locked" on lock upgrade), and the busy timeout waits instead
    # of failing. https://docs.djangoproject.com/en/5.2/ref/databases/#sqlite-notes
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Subprocesses started by tests (workers, web) must see the test database, so
    # it is a file, never SQLite's default in-memory test database.
    DATABASES["default"]["TEST"] = {
        "NAME": env.str("DATABASE_TEST_NAME", default=str(VAR_DIR / "test.sqlite3"))
    }
else:
    # https://docs.djangoproject.com/en/5.2/ref/databases/#persistent-connections
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"
    },
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default="") or VAR_DIR / "static")
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Serve straight from the apps' static folders, so `make run` needs no collectstatic;
# production runs collectstatic and sets this off.
WHITENOISE_USE_FINDERS = env.bool("WHITENOISE_USE_FINDERS", default=True)

# Uploaded audio lives here and nowhere else.
# https://docs.djangoproject.com/en/5.2/ref/settings/#media-root
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default="") or VAR_DIR / "media")
MEDIA_URL = "media/"
# Uploads above this size go to a temporary file instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = env.int("FILE_UPLOAD_MAX_MEMORY_SIZE", default=2_621_440)
FILE_UPLOAD_PERMISSIONS = 0o640

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/upload/"

# Redis: broker, result backend (and, later, cache and channel layer) -----------------
REDIS_URL = env.str("REDIS_URL", default="")
EMBEDDED_REDIS = None
if not REDIS_URL:
    # No Redis given: start (or reuse) the project's own one. Tests use another
    # database number so that they never touch a running system's queues.
    EMBEDDED_REDIS = ensure_embedded_redis(
        VAR_DIR / "redis", port=embedded_port_from_env()
    )
    REDIS_URL = f"{EMBEDDED_REDIS.url}/{env.int('KIKI_REDIS_DB', default=0)}"

# Realtime (Django Channels) ----------------------------------------------------------
# The channel layer lives on the same Redis as the broker. It is at-most-once: every
# (re)connect gets a snapshot from the database first, then events with a sequence
# number. https://channels.readthedocs.io/en/stable/topics/channel_layers.html
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [REDIS_URL],
            "prefix": env.str("CHANNEL_LAYER_PREFIX", default="asgi"),
            # Events older than this are useless to a browser: it resyncs by snapshot.
            "expiry": 60,
            "group_expiry": 24 * 3600,
            "capacity": 500,
        },
    },
}
# A signed token that lets an API client (no session) open a job's WebSocket.
WS_TOKEN_MAX_AGE = env.int("WS_TOKEN_MAX_AGE", default=3600)
# The consumer sends {"type": "heartbeat"} this often; uvicorn's protocol-level
# pings (--ws-ping-interval/--ws-ping-timeout) drop half-open connections.
WS_HEARTBEAT_SECONDS = env.float("WS_HEARTBEAT_SECONDS", default=25)
# Jobs in a user's feed snapshot.
WS_FEED_SNAPSHOT_SIZE = env.int("WS_FEED_SNAPSHOT_SIZE", default=50)
# Progress events from a running job at most this often.
ASR_PROGRESS_INTERVAL = env.float("ASR_PROGRESS_INTERVAL", default=0.5)

# Speech recognition -------------------------------------------------------------------
# Which engine a worker loads: whisper (offline default), synthetic (load tests only).
ASR_ENGINE = env.str("ASR_ENGINE", default="whisper")
# A model directory (CTranslate2 for whisper); empty means the engine's default.
ASR_MODEL = env.str("ASR_MODEL", default="")
ASR_DEVICE = env.str("ASR_DEVICE", default="cpu")
ASR_COMPUTE_TYPE = env.str("ASR_COMPUTE_TYPE", default="int8")
# Threads per worker process. Engines default to more than a small machine has.
ASR_THREADS = env.int("ASR_THREADS", default=2)
ASR_BEAM_SIZE = env.int("ASR_BEAM_SIZE", default=5)
# The synthetic engine sleeps duration x this real-time factor.
ASR_SYNTHETIC_RTF = env.float("ASR_SYNTHETIC_RTF", default=0.0)
# Load the engine when a worker process starts, not on its first job.
ASR_PRELOAD = env.bool("ASR_PRELOAD", default=True)

# Limits on untrusted audio.
ASR_MAX_UPLOAD_BYTES = env.int("ASR_MAX_UPLOAD_BYTES", default=100 * 1024 * 1024)
ASR_MAX_DURATION_SECONDS = env.float("ASR_MAX_DURATION_SECONDS", default=4 * 3600)
ASR_DECODE_TIMEOUT_SECONDS = env.float("ASR_DECODE_TIMEOUT_SECONDS", default=300)
# A job whose worker died this many times is failed with code worker_lost.
ASR_MAX_ATTEMPTS = env.int("ASR_MAX_ATTEMPTS", default=3)

# Time limits of one transcribe task: soft = base + duration x rtf, capped at max;
# hard = soft + grace. https://docs.celeryq.dev/en/stable/userguide/workers.html#time-limits
ASR_TIME_LIMIT_BASE = env.float("ASR_TIME_LIMIT_BASE", default=120)
ASR_TIME_LIMIT_RTF = env.float("ASR_TIME_LIMIT_RTF", default=1.0)
ASR_TIME_LIMIT_MAX = env.float(
    "ASR_TIME_LIMIT_MAX",
    default=ASR_TIME_LIMIT_BASE + ASR_MAX_DURATION_SECONDS * ASR_TIME_LIMIT_RTF,
)
ASR_TIME_LIMIT_GRACE = env.float("ASR_TIME_LIMIT_GRACE", default=30)

# Celery -------------------------------------------------------------------------------
# https://docs.celeryq.dev/en/stable/userguide/configuration.html
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = env.int("CELERY_RESULT_EXPIRES", default=24 * 3600)
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "asr.transcribe": {"queue": "asr"},
    "bots.*": {"queue": "bots"},
}
# One message at a time per process: a long GPU job must not hold others hostage.
# https://docs.celeryq.dev/en/stable/userguide/optimizing.html#prefetch-limits
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_TRACK_STARTED = True
# Flower and the metrics need task events.
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
# On a lost broker connection, unacked messages are redelivered to other workers;
# cancelling our copies avoids the same job running twice.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-cancel-long-running-tasks-on-connection-loss
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# SIGTERM: stop taking tasks, give running ones this long to finish, then cold
# shutdown, which returns acks_late messages to the queue.
# https://docs.celeryq.dev/en/stable/userguide/workers.html#soft-shutdown
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = env.float(
    "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", default=60
)
CELERY_WORKER_ENABLE_SOFT_SHUTDOWN_ON_IDLE = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A Redis broker redelivers an unacknowledged message after visibility_timeout. It
# must exceed the longest hard time limit, or a job still running would be handed
# to a second worker. The result backend uses the same transport options.
# https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html#visibility-timeout
CELERY_VISIBILITY_TIMEOUT = env.float(
    "CELERY_VISIBILITY_TIMEOUT", default=ASR_TIME_LIMIT_MAX + ASR_TIME_LIMIT_GRACE + 300
)
if CELERY_VISIBILITY_TIMEOUT <= ASR_TIME_LIMIT_MAX + ASR_TIME_LIMIT_GRACE:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "CELERY_VISIBILITY_TIMEOUT must be longer than ASR_TIME_LIMIT_MAX + "
        "ASR_TIME_LIMIT_GRACE, or running jobs would be delivered twice"
    )
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    # How often a worker sweeps for messages whose worker died (kombu Redis transport):
    # every interval x throttle seconds.
    "unacked_restore_interval": env.int("BROKER_UNACKED_RESTORE_INTERVAL", default=10),
    "unacked_restore_throttle": env.int("BROKER_UNACKED_RESTORE_THROTTLE", default=10),
}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT
}
# Jobs queued or running past their deadline (their message was lost, e.g. a Redis
# without AOF restarted) are re-enqueued by this periodic task.
ASR_RECONCILE_INTERVAL = env.float("ASR_RECONCILE_INTERVAL", default=60)
CELERY_BEAT_SCHEDULE = {
    "asr-reconcile": {
        "task": "asr.reconcile",
        "schedule": ASR_RECONCILE_INTERVAL,
    },
}

WORKER_HOSTNAME = env.str("WORKER_HOSTNAME", default="") or socket.gethostname()

# REST API -----------------------------------------------------------------------------
# https://www.django-rest-framework.org/api-guide/settings/
REST_FRAMEWORK = {
    # Token first: its WWW-Authenticate header is what makes anonymous calls 401.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "asr.api.pagination.TranscriptionPagination",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "kikipounamu.api.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "kikipounamu API",
    "DESCRIPTION": "Speech recognition jobs: submit audio, follow the job, fetch the transcript.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# Logging ------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.request": {"level": "WARNING"},
        "faster_whisper": {"level": "WARNING"},
    },
}
