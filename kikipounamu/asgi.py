"""ASGI entry point: HTTP (Django, with an upload size limit) and WebSocket (Channels)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kikipounamu.settings")

# Django must be set up before anything imports models (consumers, auth middleware).
django_application = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter  # noqa: E402
from channels.routing import URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from asr.routing import websocket_urlpatterns  # noqa: E402
from kikipounamu.asgi_limits import BodySizeLimitMiddleware  # noqa: E402
from kikipounamu.asgi_limits import ConcurrencyLimitMiddleware  # noqa: E402
from kikipounamu.ws_origin import BrowserOriginValidator  # noqa: E402

# Room for the multipart envelope and the other form fields around the file.
_MULTIPART_OVERHEAD = 64 * 1024

application = ProtocolTypeRouter(
    {
        "http": BodySizeLimitMiddleware(
            ConcurrencyLimitMiddleware(
                django_application, settings.WEB_MAX_CONCURRENT_REQUESTS
            ),
            max_body_bytes=settings.ASR_MAX_UPLOAD_BYTES + _MULTIPART_OVERHEAD,
            describe_limit=f"{settings.ASR_MAX_UPLOAD_BYTES / 1e6:.0f} MB",
        ),
        "websocket": BrowserOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
