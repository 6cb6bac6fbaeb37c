"""Settings for kikipounamu.

Every value comes from the environment (django-environ); the defaults are the embedded
single-machine defaults (SQLite under var/, the project's own Redis, the offline
`whisper` engine). Production changes environment variables only; each one is listed
in .env.example.

Declarations only: importing this module starts nothing and writes nothing. The
folders under var/, the secret key file and the embedded Redis are made by the entry
points that use them (kikipounamu/local.py).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from kikipounamu.redis_server import celery_url
from kikipounamu.redis_server import embedded_url
from kikipounamu.storages import s3_storage

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A .env file is optional; real environment variables win over it.
env.read_env(str(BASE_DIR / ".env"), overwrite=False)

# An empty value means the default, so a copied .env.example changes nothing.
VAR_DIR = Path(env.str("KIKI_VAR_DIR", default="") or BASE_DIR / "var")

# https://docs.djangoproject.com/en/5.2/ref/settings/#debug
DEBUG = env.bool("DJANGO_DEBUG", default=False)


# https://docs.djangoproject.com/en/5.2/ref/settings/#secret-key
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
# A fresh machine needs no set-up, yet the key must be stable across restarts
# (sessions, signed tokens): without DJANGO_SECRET_KEY it is generated once, by the
# first entry point that runs (kikipounamu.local.prepare), and kept in this file.
SECRET_KEY_FILE = None if SECRET_KEY else VAR_DIR / "secret_key"
if SECRET_KEY_FILE is not None and SECRET_KEY_FILE.exists():
    SECRET_KEY = SECRET_KEY_FILE.read_text().strip()
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
    # Swagger UI and ReDoc as static files (see SPECTACULAR_SETTINGS).
    "drf_spectacular_sidecar",
    "channels",
    "asr",
    "bots",
    "webhooks",
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
    # Lines logged while serving /api/v1/transcriptions/<id>/... carry that job id.
    "kikipounamu.logs.LogContextMiddleware",
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
# Persistent connections: a web process runs requests on a fixed set of threads
# (WEB_MAX_CONCURRENT_REQUESTS, kikipounamu/asgi_handler.py) and a Celery pool
# process runs tasks one after another, so each keeps one connection instead of
# opening one per request or task. Checked before reuse after an error or idle time.
# https://docs.djangoproject.com/en/5.2/ref/databases/#persistent-connections
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=600)
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
# Serve straight from the apps' static folders, so `make run` needs no collectstatic;
# production runs collectstatic and sets this off.
WHITENOISE_USE_FINDERS = env.bool("WHITENOISE_USE_FINDERS", default=True)

# Uploaded audio lives here and nowhere else.
# https://docs.djangoproject.com/en/5.2/ref/settings/#media-root
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default="") or VAR_DIR / "media")
MEDIA_URL = "media/"

# Where audio is kept: uploads, fanned-out chunks, Telegram downloads. Every reader
# and writer goes through Django's storage API (asr/storage.py), so a worker on
# another machine reads the same objects. "filesystem": MEDIA_ROOT, for one machine.
# "s3": an S3-compatible object store (AWS, MinIO, SeaweedFS, Ceph) through
# django-storages, for workers that share no disk with the web.
# https://django-storages.readthedocs.io/en/latest/backends/amazon-S3.html
STORAGE_BACKEND = env.str("STORAGE_BACKEND", default="filesystem")
if STORAGE_BACKEND not in ("filesystem", "s3"):
    raise ImproperlyConfigured(
        f"STORAGE_BACKEND={STORAGE_BACKEND!r}: use 'filesystem' or 's3'."
    )
S3_ENDPOINT_URL = env.str("S3_ENDPOINT_URL", default="") or None  # None: AWS itself
S3_BUCKET = env.str("S3_BUCKET", default="")
S3_REGION = env.str("S3_REGION", default="") or None
# "path" (http://host/bucket/key: MinIO, SeaweedFS, most self-hosted stores) or
# "virtual" (http://bucket.host/key: AWS); empty lets botocore choose.
S3_ADDRESSING_STYLE = env.str("S3_ADDRESSING_STYLE", default="") or None
# Server-side encryption: "" (the bucket's default), "AES256" or "aws:kms" (with
# S3_SSE_KMS_KEY_ID for a key other than the account's default).
S3_SSE = env.str("S3_SSE", default="")
S3_SSE_KMS_KEY_ID = env.str("S3_SSE_KMS_KEY_ID", default="")
# A worker reads an object into a temporary file that stays in memory up to this
# size and spills to disk past it: memory is bounded whatever the upload's size.
S3_MAX_MEMORY_BYTES = env.int("S3_MAX_MEMORY_BYTES", default=1_048_576)
# Seconds to connect and to wait for a read, and tries per request (botocore's
# "standard" mode backs off between them); past them a job's attempt counts as a
# transient storage failure (asr/services/attempts.py).
S3_CONNECT_TIMEOUT = env.float("S3_CONNECT_TIMEOUT", default=5)
S3_READ_TIMEOUT = env.float("S3_READ_TIMEOUT", default=30)
S3_MAX_ATTEMPTS = env.int("S3_MAX_ATTEMPTS", default=3)
if STORAGE_BACKEND == "s3":
    if not S3_BUCKET:
        raise ImproperlyConfigured("STORAGE_BACKEND=s3 needs S3_BUCKET.")
    _default_storage = s3_storage(
        bucket=S3_BUCKET,
        endpoint_url=S3_ENDPOINT_URL,
        region=S3_REGION,
        addressing_style=S3_ADDRESSING_STYLE,
        # Empty: boto3's own chain (AWS_* variables, ~/.aws, instance role).
        access_key=env.str("S3_ACCESS_KEY_ID", default="") or None,
        secret_key=env.str("S3_SECRET_ACCESS_KEY", default="") or None,
        sse=S3_SSE,
        sse_kms_key_id=S3_SSE_KMS_KEY_ID,
        max_memory_size=S3_MAX_MEMORY_BYTES,
        connect_timeout=S3_CONNECT_TIMEOUT,
        read_timeout=S3_READ_TIMEOUT,
        max_attempts=S3_MAX_ATTEMPTS,
    )
else:
    _default_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Uploads above this size go to a temporary file instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = env.int("FILE_UPLOAD_MAX_MEMORY_SIZE", default=2_621_440)
FILE_UPLOAD_PERMISSIONS = 0o640

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/upload/"

# Live dictation (asr.realtime.live) ----------------------------------------------------
# Live streams all web processes together take at once; past it a new stream is
# closed with 1013 "busy, retry in N s".
LIVE_MAX_STREAMS = env.int("LIVE_MAX_STREAMS", default=600)
# And while this many live messages wait (the live workers cannot keep up).
LIVE_MAX_QUEUE_DEPTH = env.int("LIVE_MAX_QUEUE_DEPTH", default=500)
# Longest session (seconds of audio); at it the session ends as if stopped.
LIVE_MAX_SESSION_SECONDS = env.float("LIVE_MAX_SESSION_SECONDS", default=1800)
# No audio for this long: the session ends (the client is gone or forgot to stop).
LIVE_IDLE_SECONDS = env.float("LIVE_IDLE_SECONDS", default=30)
# After stop, the client waits at most this long for its last finals and the end;
# then it is told the session will be finished later (no live worker answers).
LIVE_FINISH_TIMEOUT = env.float("LIVE_FINISH_TIMEOUT", default=60)
# The start message must come within this long of the connection.
LIVE_START_TIMEOUT = env.float("LIVE_START_TIMEOUT", default=10)
# A dropped connection's session waits this long for its client to come back with
# its id before it is finished.
LIVE_RESUME_SECONDS = env.float("LIVE_RESUME_SECONDS", default=60)
# A session's Redis keys expire this long after the last write (its audio is in Redis
# until the finish stores it: about 32 KB per second of audio).
LIVE_STATE_TTL = env.int(
    "LIVE_STATE_TTL",
    default=int(LIVE_MAX_SESSION_SECONDS + 2 * LIVE_RESUME_SECONDS + 600),
)
# Voice-activity end points: a pause this long ends an utterance; none lasts longer
# than LIVE_MAX_UTTERANCE_SECONDS (its final's cost is bounded).
LIVE_ENDPOINT_SILENCE_MS = env.int("LIVE_ENDPOINT_SILENCE_MS", default=400)
LIVE_MAX_UTTERANCE_SECONDS = env.float("LIVE_MAX_UTTERANCE_SECONDS", default=25)
# WebRTC VAD aggressiveness 0-3 (3: the fewest noises taken for speech).
LIVE_VAD_MODE = env.int("LIVE_VAD_MODE", default=3)
# A pause's first 200 ms ask a live worker for the utterance as it would end there
# (asr.live_prepare), so its final is mostly made when the end point comes. Off, a
# final waits for its own whisper call; on, a pause that speech resumes after costs
# a call for nothing.
LIVE_PREPARE = env.bool("LIVE_PREPARE", default=True)
# Whisper encodes a live utterance in a window fitted to it (its length and 6 s)
# rather than its full 30 s: about a third of the call's cost at about the same WER
# (asr/engines/whisper_window.py, bench/whisper_window.py). Other engines ignore it.
LIVE_FITTED_WINDOW = env.bool("LIVE_FITTED_WINDOW", default=True)
# A partial is asked for after this much new speech, one at a time per stream.
LIVE_PARTIAL_INTERVAL = env.float("LIVE_PARTIAL_INTERVAL", default=0.6)
# The same for the OpenAI and FunASR doors, which send a word only once two partials
# in a row agree on it, so that their first text waits for two (bench/
# openai_realtime.py, 4 streams: first delta p50 1.66 s at 0.6, 1.12 s at 0.4, finals
# p99 0.85 and 0.78 s). Not for every door: at 500 synthetic streams 0.4 s cost the
# web 25 % more CPU per stream-second, and its frames backed up (bench/live.py).
LIVE_AGREED_PARTIAL_INTERVAL = env.float("LIVE_AGREED_PARTIAL_INTERVAL", default=0.4)
# Threads per live worker process (the Procfile runs LIVE_WORKER_CONCURRENCY of
# them): whisper costs about the same per call whatever the audio's length, and
# several single-threaded processes keep one free for a final more often than one
# process of several threads (bench/live.py: 4 streams on 2 cores, final p50 1.33 s
# with 1 x 2 threads, 0.99 s with 2 x 1).
LIVE_THREADS = env.int("LIVE_THREADS", default=1)
# No stream asks for a partial or a prepare while this many wait in the live_partial
# queue: the live workers are behind, and those are what can be left undone.
LIVE_PARTIAL_BACKLOG = env.int("LIVE_PARTIAL_BACKLOG", default=2)
# FunASR's clients send no credentials: accepted from these networks without a token.
LIVE_TRUSTED_NETWORKS = env.list(
    "LIVE_TRUSTED_NETWORKS", default=["127.0.0.0/8", "::1"]
)

# Redis: broker, result backend, cache and channel layer ------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
# No Redis given: the project's own, this checkout's (kikipounamu/redis_server.py),
# on a Unix socket under var/redis, started by the entry points that use it. Tests
# use another database number so that they never touch a running system's queues.
REDIS_EMBEDDED = not REDIS_URL
REDIS_DATA_DIR = VAR_DIR / "redis"
if REDIS_EMBEDDED:
    REDIS_URL = embedded_url(REDIS_DATA_DIR, env.int("KIKI_REDIS_DB", default=0))

# Requests inside Django at once, per web process: the threads that run their sync
# code, each keeping a database connection (kikipounamu/asgi_handler.py); the rest
# wait in the event loop. Bounds threads and database connections under bursts.
WEB_MAX_CONCURRENT_REQUESTS = env.int("WEB_MAX_CONCURRENT_REQUESTS", default=8)

# OpenAI-compatible door (asr/openai_api) ---------------------------------------------
# POST /v1/audio/transcriptions answers when its job has finished, waiting on the
# job's events without a thread; past this many seconds it answers 504 with the job's
# id and /api/v1 link, and the job goes on. OpenAI's client waits 600 s by default.
# https://platform.openai.com/docs/api-reference/audio/createTranscription
OPENAI_WAIT_SECONDS = env.float("OPENAI_WAIT_SECONDS", default=300)
# The channel layer may drop an event: while none comes, the job is re-read this often.
OPENAI_RECHECK_SECONDS = env.float("OPENAI_RECHECK_SECONDS", default=5)

# Realtime (Django Channels) ----------------------------------------------------------
# The channel layer lives on the same Redis as the broker. It is at-most-once: every
# (re)connect gets a snapshot from the database first, then events with a sequence
# number. https://channels.readthedocs.io/en/stable/topics/channel_layers.html
CHANNEL_LAYERS = {
    "default": {
        # Redis pub/sub: a group_send is one PUBLISH, and a web process gets its
        # messages pushed on one subscribed connection. The list-based
        # RedisChannelLayer takes three round trips per group and has each process
        # poll. Both are at-most-once, which the snapshot-on-connect design assumes.
        # https://github.com/django/channels_redis#redispubsubchannellayer
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {
            "hosts": [REDIS_URL],
            "prefix": env.str("CHANNEL_LAYER_PREFIX", default="asgi"),
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
# Which engine a worker loads: whisper (offline default), funasr (production GPUs),
# synthetic (load tests only).
ASR_ENGINE = env.str("ASR_ENGINE", default="whisper")
# A model directory (CTranslate2 for whisper); empty means the engine's default.
ASR_MODEL = env.str("ASR_MODEL", default="")
ASR_DEVICE = env.str("ASR_DEVICE", default="cpu")
ASR_COMPUTE_TYPE = env.str("ASR_COMPUTE_TYPE", default="int8")
# Threads per worker process. Engines default to more than a small machine has.
ASR_THREADS = env.int("ASR_THREADS", default=2)
ASR_BEAM_SIZE = env.int("ASR_BEAM_SIZE", default=5)
# Whisper (ASR_ENGINE=whisper): drop the audio without speech (faster-whisper's VAD
# filter, the Silero VAD model in its wheel) before decoding, so silence and noise
# give empty text instead of made-up words ("You"); segment times stay those of the
# original audio. https://github.com/SYSTRAN/faster-whisper#vad-filter
ASR_WHISPER_VAD = env.bool("ASR_WHISPER_VAD", default=True)
# The synthetic engine sleeps duration x this real-time factor.
ASR_SYNTHETIC_RTF = env.float("ASR_SYNTHETIC_RTF", default=0.0)
# true: the synthetic engine stands in for one that batches natively (FunASR on a
# GPU): a batch is one call costing its longest clip x the RTF. Tests and benchmarks.
ASR_SYNTHETIC_BATCHES = env.bool("ASR_SYNTHETIC_BATCHES", default=False)
# Load the engine when a worker process starts, not on its first job.
ASR_PRELOAD = env.bool("ASR_PRELOAD", default=True)
# FunASR (ASR_ENGINE=funasr): optional local VAD (fsmn-vad) and punctuation model
# dirs; hub names only with ASR_ALLOW_DOWNLOAD (offline, AutoModel retries the hub
# for ~20 s and fails misleadingly). https://github.com/modelscope/FunASR#quick-start
ASR_VAD_MODEL = env.str("ASR_VAD_MODEL", default="")
ASR_PUNC_MODEL = env.str("ASR_PUNC_MODEL", default="")
ASR_ALLOW_DOWNLOAD = env.bool("ASR_ALLOW_DOWNLOAD", default=False)
ASR_USE_ITN = env.bool("ASR_USE_ITN", default=True)
# Segments per engine call, and the longest segment (VAD cut or fixed window).
ASR_BATCH_SIZE = env.int("ASR_BATCH_SIZE", default=16)
ASR_MAX_SEGMENT_SECONDS = env.float("ASR_MAX_SEGMENT_SECONDS", default=30)
# Most audio seconds in one engine call (FunASR). 0: one longest segment's worth on
# CPU, where activations are worker RAM (SenseVoiceSmall ~3.4 MB per audio second),
# no limit on a GPU (ASR_BATCH_SIZE and the out-of-memory halving govern VRAM).
ASR_CALL_AUDIO_SECONDS = env.float("ASR_CALL_AUDIO_SECONDS", default=0)
# Micro-batching, on engines that batch natively (FunASR on a GPU) only: a worker
# that takes a short job also takes other short jobs waiting in the queue (the
# oldest first) and runs them in one engine call. Bounded by the number of jobs (1:
# off), their total audio, the length of a job that may join, how long to wait for
# more, and a fair share of the waiting jobs per process (none left idle).
ASR_BATCH_JOBS = env.int("ASR_BATCH_JOBS", default=16)
ASR_BATCH_AUDIO_SECONDS = env.float("ASR_BATCH_AUDIO_SECONDS", default=120)
ASR_BATCH_JOB_MAX_SECONDS = env.float("ASR_BATCH_JOB_MAX_SECONDS", default=30)
ASR_BATCH_WAIT_SECONDS = env.float("ASR_BATCH_WAIT_SECONDS", default=0.02)
# GPUs for this worker's processes, e.g. "0,1": pool process i gets GPU i mod n
# (also the worker option --gpus). Empty: ASR_DEVICE as is.
ASR_GPUS = env.str("ASR_GPUS", default="")
# Recycle a worker process after this many tasks, or when its RSS / CUDA memory
# passes these sizes (0: never). RSS uses Celery's worker_max_memory_per_child.
# https://docs.celeryq.dev/en/stable/userguide/workers.html#max-tasks-per-child-setting
ASR_WORKER_MAX_TASKS = env.int("ASR_WORKER_MAX_TASKS", default=0)
ASR_WORKER_MAX_RSS_MB = env.int("ASR_WORKER_MAX_RSS_MB", default=0)
ASR_WORKER_MAX_VRAM_MB = env.int("ASR_WORKER_MAX_VRAM_MB", default=0)

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

# Long audio fanned out (asr.fanout): a job longer than ASR_FANOUT_SECONDS (0: never)
# is cut at pauses (Silero VAD) into chunks of about ASR_FANOUT_CHUNK_SECONDS, never
# more than ASR_FANOUT_MAX_CHUNK_SECONDS, that run as parallel tasks on every asr
# worker and are merged in order. Each chunk gets the time limits of its own length.
# README "How jobs run" (long audio).
ASR_FANOUT_SECONDS = env.float("ASR_FANOUT_SECONDS", default=600)
ASR_FANOUT_CHUNK_SECONDS = env.float("ASR_FANOUT_CHUNK_SECONDS", default=120)
ASR_FANOUT_MAX_CHUNK_SECONDS = env.float("ASR_FANOUT_MAX_CHUNK_SECONDS", default=180)
if not 0 < ASR_FANOUT_CHUNK_SECONDS <= ASR_FANOUT_MAX_CHUNK_SECONDS:
    raise ImproperlyConfigured(
        "ASR_FANOUT_CHUNK_SECONDS must be above 0 and at most "
        "ASR_FANOUT_MAX_CHUNK_SECONDS"
    )

# Celery -------------------------------------------------------------------------------
# https://docs.celeryq.dev/en/stable/userguide/configuration.html
# The same Redis, in the URL form kombu and Celery's backend read (a Unix socket's
# is redis+socket://).
CELERY_BROKER_URL = celery_url(REDIS_URL)
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = env.int("CELERY_RESULT_EXPIRES", default=24 * 3600)
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "asr.transcribe": {"queue": "asr"},
    "asr.transcribe_chunk": {"queue": "asr"},
    # Live work has queues and workers of its own, so file jobs never stand in front
    # of a final; partials wait behind finals (queue_order_strategy below).
    "asr.live_final": {"queue": "live"},
    "asr.live_prepare": {"queue": "live"},
    "asr.live_finish": {"queue": "live"},
    "asr.live_partial": {"queue": "live_partial"},
    "bots.*": {"queue": "bots"},
    # Webhook calls wait on other people's servers: their own queue and threads
    # worker (Procfile worker_webhooks), so a hanging receiver holds up no one else.
    "webhooks.*": {"queue": "webhooks"},
}
# One message at a time per process: a long GPU job must not hold others hostage.
# https://docs.celeryq.dev/en/stable/userguide/optimizing.html#prefetch-limits
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A pool process loads its model before it reports up (asr.tasks preload); a large
# model on a busy machine takes far longer than Celery's 4 s default.
CELERY_WORKER_PROC_ALIVE_TIMEOUT = env.float(
    "CELERY_WORKER_PROC_ALIVE_TIMEOUT", default=300
)
# Worker process recycling (see ASR_WORKER_MAX_*); Celery takes KiB.
CELERY_WORKER_MAX_TASKS_PER_CHILD = ASR_WORKER_MAX_TASKS or None
# A VRAM limit needs the check on (asr.worker.request_recycle): 1 TiB if no RSS one.
CELERY_WORKER_MAX_MEMORY_PER_CHILD = ASR_WORKER_MAX_RSS_MB * 1024 or (
    2**30 if ASR_WORKER_MAX_VRAM_MB else None
)
# Celery's Django fixup closes every database connection before and after each task
# (so each task connects anew: ~0.4 ms of CPU on SQLite, a TCP and authentication
# round trip on PostgreSQL) unless CELERY_DB_REUSE_MAX is set; then only every that
# many tasks. In between, asr.ops.celery_signals does per task what Django does per
# request: close_old_connections (CONN_MAX_AGE; a connection that broke).
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_TRACK_STARTED = True
# Task events (received/started/succeeded, published to Redis) cost a worker about
# 1 ms of CPU per task, as much as the rest of Celery's per-task work. Nothing of
# ours reads them (the metrics and the dashboard read the database and heartbeats);
# Flower does, and a running Flower turns them on in every worker by itself (its
# enable_events option, on by default). On here: always on.
# https://flower.readthedocs.io/en/latest/config.html#enable-events
CELERY_WORKER_SEND_TASK_EVENTS = env.bool(
    "CELERY_WORKER_SEND_TASK_EVENTS", default=False
)
# The "sent" event is the client's (web, beat): no worker can turn it on later.
CELERY_TASK_SEND_SENT_EVENT = env.bool("CELERY_TASK_SEND_SENT_EVENT", default=False)
# Every apply_async builds an AsyncResult, and with it the result backend. Celery keeps
# the backend per thread unless told it is thread-safe (the Redis one is: it uses a
# connection pool); under ASGI every request runs in a thread of its own, so that
# meant a new backend (~1 ms of CPU) per request.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#result-backend-thread-safe
CELERY_RESULT_BACKEND_THREAD_SAFE = True
# Running jobs carry on through a lost broker connection (a Redis restart). Celery's
# cancelling them would write the cancellation to the result backend, the same Redis
# that is down, fail, take the task as revoked and acknowledge its message: lost,
# until the reconciler found it (tests/asr/test_recovery.py). A job finished after
# the restart is stored once (its claim in the database); if its message comes back
# anyway, its claim finds it done.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-cancel-long-running-tasks-on-connection-loss
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# Cold shutdown (SIGQUIT, or SIGTERM with REMAP_SIGTERM=SIGQUIT): stop taking tasks,
# give running ones this long to finish, then return their acks_late messages to the
# queue. A plain SIGTERM is the warm shutdown, which waits for them however long.
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
    # A sweep holds a Redis lock so that workers do not sweep at once; a worker killed
    # while holding it would stop every sweep until the lock expires (kombu: 300 s).
    # Sweeps take milliseconds, and two at once are safe (each message is restored in
    # a WATCH transaction that only one wins), so the lock need not outlive them long.
    "unacked_mutex_expire": env.int("BROKER_UNACKED_MUTEX_EXPIRE", default=30),
    # A worker of several queues takes from them in name order, not round robin:
    # `-Q live,live_partial` runs every waiting final before any partial (kombu's
    # "priority" strategy would follow a set's order, which varies per process).
    "queue_order_strategy": "sorted",
}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT
}
# Jobs queued or running past their deadline (their message was lost, e.g. a Redis
# without AOF restarted) are re-enqueued by this periodic task.
ASR_RECONCILE_INTERVAL = env.float("ASR_RECONCILE_INTERVAL", default=60)
# A send the broker refused (Redis down) is tried again by the process that made it,
# in the background, as soon as the broker answers: for this many seconds, and for
# at most this many sends held at once (kikipounamu/dispatch.py). Past either, and
# for a process that dies first, the reconcilers are the net.
DISPATCH_RESEND_SECONDS = env.float("DISPATCH_RESEND_SECONDS", default=600)
DISPATCH_RESEND_LIMIT = env.int("DISPATCH_RESEND_LIMIT", default=10_000)

WORKER_HOSTNAME = env.str("WORKER_HOSTNAME", default="") or socket.gethostname()

# Telegram bot (bots app) --------------------------------------------------------------
# https://core.telegram.org/bots/api
# The token from @BotFather. Empty: the bot is off (the webhook still refuses strangers).
TELEGRAM_BOT_TOKEN = env.str("TELEGRAM_BOT_TOKEN", default="")
# Telegram sends it in X-Telegram-Bot-Api-Secret-Token on every webhook call; empty
# refuses every call. 1-256 of A-Z a-z 0-9 _ -.
# https://core.telegram.org/bots/api#setwebhook
TELEGRAM_WEBHOOK_SECRET = env.str("TELEGRAM_WEBHOOK_SECRET", default="")
# The public https URL of /bots/telegram/webhook/, for `manage.py telegram_set_webhook`.
TELEGRAM_WEBHOOK_URL = env.str("TELEGRAM_WEBHOOK_URL", default="")
# Telegram opens at most this many webhook connections at once (1-100).
TELEGRAM_WEBHOOK_MAX_CONNECTIONS = env.int(
    "TELEGRAM_WEBHOOK_MAX_CONNECTIONS", default=40
)
# Telegram's servers; a local Bot API server (github.com/tdlib/telegram-bot-api) or the
# test suite's fake one otherwise. /bot<token>/<method> and /file/bot<token>/ hang off it.
TELEGRAM_API_BASE_URL = env.str(
    "TELEGRAM_API_BASE_URL", default="https://api.telegram.org"
).rstrip("/")
# For commands addressed as /help@name in groups; empty: asked once with getMe.
TELEGRAM_BOT_USERNAME = env.str("TELEGRAM_BOT_USERNAME", default="")
# Chat ids the bot serves; empty: every chat.
TELEGRAM_ALLOWED_CHAT_IDS = env.list("TELEGRAM_ALLOWED_CHAT_IDS", cast=int, default=[])
# Bot API time-outs (s), each for the whole call: connecting (or waiting for a pooled
# connection), sendMessage / editMessageText / getFile / getMe (Telegram answers them
# in well under a second when it is healthy), sendDocument (a transcript file), and
# downloading a recording (up to 20 MB). A call that runs out has an unknown outcome:
# a send is repeated (README "Telegram"). https://core.telegram.org/bots/api
TELEGRAM_CONNECT_TIMEOUT = env.float("TELEGRAM_CONNECT_TIMEOUT", default=3.0)
TELEGRAM_MESSAGE_TIMEOUT = env.float("TELEGRAM_MESSAGE_TIMEOUT", default=5.0)
TELEGRAM_DOCUMENT_TIMEOUT = env.float("TELEGRAM_DOCUMENT_TIMEOUT", default=20.0)
TELEGRAM_DOWNLOAD_TIMEOUT = env.float("TELEGRAM_DOWNLOAD_TIMEOUT", default=60.0)
# One delivery task per chat at a time keeps its replies in order: it holds the chat's
# lease, which a thread of its process renews every quarter of this while it works
# (bots.services.delivery). A task that dies lets go of the chat at most this long
# after; bots.reclaim_leases, every TELEGRAM_LEASE_RECLAIM_INTERVAL s, then hands the
# chat to a new task. Clocks of the machines that run bots workers must agree to well
# within it (NTP).
TELEGRAM_DELIVERY_LEASE_SECONDS = env.float(
    "TELEGRAM_DELIVERY_LEASE_SECONDS", default=10.0
)
if TELEGRAM_DELIVERY_LEASE_SECONDS < 2:
    raise ImproperlyConfigured(
        "TELEGRAM_DELIVERY_LEASE_SECONDS must be at least 2: it must outlast the "
        "database writes between two renewals"
    )
TELEGRAM_LEASE_RECLAIM_INTERVAL = env.float(
    "TELEGRAM_LEASE_RECLAIM_INTERVAL", default=3.0
)
# A reply part that failed this many times (5xx, time-outs; 429 does not count) is
# given up; so is one still undelivered after TELEGRAM_GIVE_UP_SECONDS.
TELEGRAM_DELIVERY_MAX_ATTEMPTS = env.int("TELEGRAM_DELIVERY_MAX_ATTEMPTS", default=8)
TELEGRAM_RETRY_BACKOFF_BASE = env.float("TELEGRAM_RETRY_BACKOFF_BASE", default=1.0)
TELEGRAM_RETRY_BACKOFF_MAX = env.float("TELEGRAM_RETRY_BACKOFF_MAX", default=60.0)
TELEGRAM_GIVE_UP_SECONDS = env.float("TELEGRAM_GIVE_UP_SECONDS", default=24 * 3600.0)
# Downloads of one recording that failed (5xx, time-outs; a 429 does not count)
# this many times, or not done after TELEGRAM_GIVE_UP_SECONDS: the user is told.
TELEGRAM_FETCH_MAX_ATTEMPTS = env.int("TELEGRAM_FETCH_MAX_ATTEMPTS", default=5)
# A transcript longer than this many messages goes on as the attached .txt only.
TELEGRAM_MAX_TEXT_MESSAGES = env.int("TELEGRAM_MAX_TEXT_MESSAGES", default=10)
# Periodic (beat): re-enqueue updates, downloads, answers and replies whose task was
# lost (a process killed between commit and enqueue, a Redis without its data),
# once they are this old.
TELEGRAM_RECONCILE_INTERVAL = env.float("TELEGRAM_RECONCILE_INTERVAL", default=30.0)
TELEGRAM_RECONCILE_MIN_AGE = env.float("TELEGRAM_RECONCILE_MIN_AGE", default=60.0)

# Completion webhooks (webhooks app) ----------------------------------------------------
# https://www.standardwebhooks.com/ (README "Webhooks")
# Links in a webhook's payload are absolute, on this address: where API clients
# reach this server.
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="http://127.0.0.1:8000").rstrip(
    "/"
)
# Webhooks go to public addresses only (no loopback, private, link-local, metadata,
# shared or reserved ones), checked when a URL is given and again after DNS at every
# connection. These networks are let through too: a private deployment's receivers,
# e.g. "10.0.0.0/8,fd00::/8". Empty: none.
WEBHOOK_ALLOWED_NETWORKS = env.list("WEBHOOK_ALLOWED_NETWORKS", default=[])
# One call's limits (s): connecting, and the whole call (connect, send, answer).
WEBHOOK_CONNECT_TIMEOUT = env.float("WEBHOOK_CONNECT_TIMEOUT", default=5.0)
WEBHOOK_TIMEOUT = env.float("WEBHOOK_TIMEOUT", default=15.0)
# Retries of a 5xx, 408, 429 or a time-out back off exponentially: attempt n + 1
# comes WEBHOOK_RETRY_BASE x WEBHOOK_RETRY_FACTOR^(n-1) s after attempt n (at most
# WEBHOOK_RETRY_MAX; a Retry-After header wins), with up to 10 % jitter. Defaults:
# 5 s, 20 s, 80 s, 5 min, 21 min, 85 min, 5.7 h, 6 h, 6 h: ten attempts over about
# 20 hours. A delivery is given up after WEBHOOK_MAX_ATTEMPTS, or once
# WEBHOOK_GIVE_UP_SECONDS have passed, or after WEBHOOK_MAX_CLIENT_ERRORS answers of
# another 4xx (or a redirect, never followed); a 410 disables the endpoint.
WEBHOOK_RETRY_BASE = env.float("WEBHOOK_RETRY_BASE", default=5.0)
WEBHOOK_RETRY_FACTOR = env.float("WEBHOOK_RETRY_FACTOR", default=4.0)
WEBHOOK_RETRY_MAX = env.float("WEBHOOK_RETRY_MAX", default=6 * 3600.0)
WEBHOOK_MAX_ATTEMPTS = env.int("WEBHOOK_MAX_ATTEMPTS", default=10)
WEBHOOK_MAX_CLIENT_ERRORS = env.int("WEBHOOK_MAX_CLIENT_ERRORS", default=3)
WEBHOOK_GIVE_UP_SECONDS = env.float("WEBHOOK_GIVE_UP_SECONDS", default=24 * 3600.0)
# A retry due within this many seconds is sent as a delayed task; a later one is
# sent by the reconciler when it is due (the broker holds no message for hours).
WEBHOOK_COUNTDOWN_MAX = env.float("WEBHOOK_COUNTDOWN_MAX", default=120.0)
# After a secret's rotation the previous one signs too (a second signature in
# webhook-signature) for this long, so receivers can switch without losing events.
WEBHOOK_SECRET_ROTATION_GRACE = env.float(
    "WEBHOOK_SECRET_ROTATION_GRACE", default=24 * 3600.0
)
# Connections each webhooks worker process keeps to receivers (one pool a process).
WEBHOOK_MAX_CONNECTIONS = env.int("WEBHOOK_MAX_CONNECTIONS", default=64)
# Periodic (beat): deliveries whose task was lost (a process killed between commit
# and enqueue, or mid-call: its lease ran out) and retries due are sent again, once
# they are this old.
WEBHOOK_RECONCILE_INTERVAL = env.float("WEBHOOK_RECONCILE_INTERVAL", default=10.0)
WEBHOOK_RECONCILE_MIN_AGE = env.float("WEBHOOK_RECONCILE_MIN_AGE", default=30.0)

# REST API -----------------------------------------------------------------------------
# https://www.django-rest-framework.org/api-guide/settings/
REST_FRAMEWORK = {
    # Token first: its WWW-Authenticate header is what makes anonymous calls 401.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON with bounds (kikipounamu/json_input.py): deep nesting, NaN and strings
    # that cannot be stored are a 400, not a 500.
    "DEFAULT_PARSER_CLASSES": [
        "kikipounamu.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "asr.api.pagination.TranscriptionPagination",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "kikipounamu.api.exception_handler",
    # Per-user rate limits, API_THROTTLE_* below.
    "DEFAULT_THROTTLE_CLASSES": [
        "asr.ops.throttling.UserRateThrottle",
        "asr.ops.throttling.SubmitRateThrottle",
    ],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "kikipounamu API",
    "DESCRIPTION": "Speech recognition jobs: submit audio, follow the job, fetch the transcript.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The docs' assets come from drf-spectacular-sidecar's static files, not a CDN, so
    # /api/docs/ and /api/redoc/ work without internet.
    # https://drf-spectacular.readthedocs.io/en/latest/settings.html
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Logging ------------------------------------------------------------------------------
# JSON lines (python-json-logger) carrying job_id / task_id / telegram_update_id where
# they apply (kikipounamu.logs), from web, workers and beat alike; "plain" for reading
# by eye. https://nhairs.github.io/python-json-logger/latest/
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOG_FORMAT = env.str("LOG_FORMAT", default="json")
# uvicorn's own lines go through the same handler, so the web's output is all JSON.
# Not through its parent "uvicorn" logger: dictConfig resets a configured logger's
# children, which turned the access log back on under --no-access-log (a JSON line
# per request, a good part of the webhook's CPU). uvicorn configures its logging
# before it imports the app, so its access logger has a handler here only when the
# access log is on.
_CONSOLE_ONLY = {"handlers": ["console"], "propagate": False}
_UVICORN = ["uvicorn.error"] + (
    ["uvicorn.access"] if logging.getLogger("uvicorn.access").handlers else []
)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
            },
        },
    },
    "filters": {"context": {"()": "kikipounamu.logs.ContextFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["context"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.request": {"level": "WARNING"},
        "faster_whisper": {"level": "WARNING"},
        # httpx logs every request's URL at INFO, and Bot API URLs hold the token.
        "httpx": {"level": "WARNING"},
        # At DEBUG these log each S3 request's headers, whose Authorization names
        # the access key: never below WARNING, whatever LOG_LEVEL says.
        **{
            name: {"level": "WARNING"}
            for name in ("boto3", "botocore", "s3transfer", "urllib3")
        },
        **dict.fromkeys(_UVICORN, _CONSOLE_ONLY),
    },
}

# Operations: cache, rate limits, backpressure, metrics, retention ---------------------
# Django's own Redis cache. Nothing of ours reads or writes it (the rate limits count
# in Redis through `limits`, under this KEY_PREFIX); it is here so that anything that
# does later shares one cache across processes, and it connects only when used.
# https://docs.djangoproject.com/en/5.2/topics/cache/#redis
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="kiki-cache"),
    }
}
# Per-user rate limits (429 + Retry-After), counted in Redis by the `limits` library
# (asr/ops/throttling.py). Submissions (POST: upload, retry) have their own, tighter
# limit. https://www.django-rest-framework.org/api-guide/throttling/
API_THROTTLE_USER = env.str("API_THROTTLE_USER", default="1200/min")
API_THROTTLE_SUBMIT = env.str("API_THROTTLE_SUBMIT", default="60/min")

# Backpressure: past this many messages waiting in the `asr` queue, API and upload
# submissions get 503 + Retry-After and nothing is stored (DESIGN.md: backpressure).
ASR_MAX_QUEUE_DEPTH = env.int("ASR_MAX_QUEUE_DEPTH", default=200)
# Retry-After when no recent job tells how fast the queue drains; estimates are
# clamped to [1, ASR_BUSY_RETRY_AFTER_MAX].
ASR_BUSY_RETRY_AFTER = env.int("ASR_BUSY_RETRY_AFTER", default=30)
ASR_BUSY_RETRY_AFTER_MAX = env.int("ASR_BUSY_RETRY_AFTER_MAX", default=600)
# Throughput, ETAs and the dashboard look at jobs finished this recently.
OPS_THROUGHPUT_WINDOW_SECONDS = env.float("OPS_THROUGHPUT_WINDOW_SECONDS", default=900)
# Workers write a heartbeat key this often, from a thread of their main process:
# live workers without a slow broadcast ping, and what each holds (asr.broker).
OPS_WORKER_HEARTBEAT_SECONDS = env.float("OPS_WORKER_HEARTBEAT_SECONDS", default=10)
# A worker with no heartbeat for this long is gone (its key expires): the messages it
# held go back to the head of their queues (asr.reclaim, every ASR_RECLAIM_INTERVAL),
# however long the broker's visibility timeout.
OPS_WORKER_GONE_SECONDS = env.float(
    "OPS_WORKER_GONE_SECONDS", default=3 * OPS_WORKER_HEARTBEAT_SECONDS
)
if OPS_WORKER_GONE_SECONDS <= OPS_WORKER_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        "OPS_WORKER_GONE_SECONDS must be longer than OPS_WORKER_HEARTBEAT_SECONDS, "
        "or live workers would look gone between beats"
    )
ASR_RECLAIM_INTERVAL = env.float("ASR_RECLAIM_INTERVAL", default=10)
# The ops dashboard's WebSocket pushes a stats snapshot this often.
OPS_DASHBOARD_INTERVAL = env.float("OPS_DASHBOARD_INTERVAL", default=3)
# /metrics (Prometheus text format). Set to require "Authorization: Bearer <token>".
# https://prometheus.io/docs/prometheus/latest/configuration/configuration/#scrape_config
METRICS_BEARER_TOKEN = env.str("METRICS_BEARER_TOKEN", default="")
# Without a token, only clients from these networks may read /metrics (default: this
# machine). A reverse proxy on this machine makes every client look local: behind
# one, set the token.
METRICS_ALLOWED_NETWORKS = env.list(
    "METRICS_ALLOWED_NETWORKS", default=["127.0.0.0/8", "::1/128"]
)

# Retention (beat): audio of finished jobs is deleted after ASR_RETENTION_AUDIO_DAYS,
# the job rows (with their history) after ASR_RETENTION_JOB_DAYS. 0 keeps forever.
ASR_RETENTION_AUDIO_DAYS = env.float("ASR_RETENTION_AUDIO_DAYS", default=30)
ASR_RETENTION_JOB_DAYS = env.float("ASR_RETENTION_JOB_DAYS", default=365)
ASR_RETENTION_INTERVAL = env.float("ASR_RETENTION_INTERVAL", default=3600)

# Periodic tasks (celery beat): the reconcilers and retention, at the intervals above.
# https://docs.celeryq.dev/en/stable/userguide/periodic-tasks.html
CELERY_BEAT_SCHEDULE = {
    "asr-reconcile": {"task": "asr.reconcile", "schedule": ASR_RECONCILE_INTERVAL},
    "asr-reclaim": {"task": "asr.reclaim", "schedule": ASR_RECLAIM_INTERVAL},
    "bots-reconcile": {
        "task": "bots.reconcile",
        "schedule": TELEGRAM_RECONCILE_INTERVAL,
    },
    "bots-reclaim-leases": {
        "task": "bots.reclaim_leases",
        "schedule": TELEGRAM_LEASE_RECLAIM_INTERVAL,
    },
    "asr-retention": {"task": "asr.retention", "schedule": ASR_RETENTION_INTERVAL},
    "webhooks-reconcile": {
        "task": "webhooks.reconcile",
        "schedule": WEBHOOK_RECONCILE_INTERVAL,
    },
}
