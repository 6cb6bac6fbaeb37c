"""ASGI entry point: HTTP (Django, with an upload size limit; Telegram's webhook and
the OpenAI-compatible door ahead of it) and WebSocket (Channels)."""

import gc
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kikipounamu.settings")

# Django must be set up before anything imports models (consumers, auth middleware).
# What get_asgi_application() does, with our handler (see asgi_handler).
django.setup(set_prefix=False)

from kikipounamu import local  # noqa: E402

# This machine's folders, secret key and embedded Redis (settings only declare them).
local.prepare()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter  # noqa: E402
from channels.routing import URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import get_resolver  # noqa: E402
from django.urls import path  # noqa: E402
from django.urls import re_path  # noqa: E402

from asr.openai_api.app import openai_door  # noqa: E402
from asr.routing import websocket_urlpatterns  # noqa: E402
from bots.webhook.app import telegram_webhook  # noqa: E402
from kikipounamu.asgi_handler import PooledThreadsASGIHandler  # noqa: E402
from kikipounamu.asgi_limits import BodySizeLimitMiddleware  # noqa: E402
from kikipounamu.celery import app as celery_app  # noqa: E402
from kikipounamu.ws_origin import BrowserOriginValidator  # noqa: E402

# Room for the multipart envelope and the other form fields around the file.
_MULTIPART_OVERHEAD = 64 * 1024

_UPLOAD_LIMIT = {
    "max_body_bytes": settings.ASR_MAX_UPLOAD_BYTES + _MULTIPART_OVERHEAD,
    "describe_limit": f"{settings.ASR_MAX_UPLOAD_BYTES / 1e6:.0f} MB",
}

django_handler = PooledThreadsASGIHandler(threads=settings.WEB_MAX_CONCURRENT_REQUESTS)
django_http = BodySizeLimitMiddleware(django_handler, **_UPLOAD_LIMIT)
# Its requests wait for their jobs on the event loop; their synchronous parts run on
# Django's request threads (see asr/openai_api/app.py).
openai_http = openai_door(run_sync=django_handler.run_sync, **_UPLOAD_LIMIT)

application = ProtocolTypeRouter(
    {
        "http": URLRouter(
            [
                # Served on the event loop, not by Django's HTTP handler: bursts of
                # updates need a fraction of its cost (see bots/webhook/app.py). The
                # stubs know Django views only; URLRouter takes ASGI applications.
                path("bots/telegram/webhook/", telegram_webhook),  # type: ignore[arg-type]
                re_path(r"^v1/", openai_http),  # type: ignore[arg-type]
                re_path(r"", django_http),  # type: ignore[arg-type]
            ]
        ),
        "websocket": BrowserOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)

# What the first requests would load otherwise: the URL conf with every view and
# serializer behind it (Django imports it on the first request), Celery's result
# backend and broker transport (on the first enqueue). Nothing connects here.
get_resolver().url_patterns  # noqa: B018
celery_app.backend  # noqa: B018
celery_app.connection_for_write().transport  # noqa: B018

# Everything loaded so far (~160k objects: Django, DRF, the views, Celery) lives as
# long as the process. Out of the collector's sight, it no longer makes each full
# collection walk it: those took 40-70 ms here, a stall for every request in flight
# on this process's event loop (measured with gc.callbacks under bench/telegram.py's
# bursts); after the freeze, 3-5 ms.
gc.freeze()
