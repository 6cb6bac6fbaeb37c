"""ASGI entry point: HTTP now, WebSocket (Django Channels) when the realtime app lands."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kikipounamu.settings")

django_application = get_asgi_application()

from django.conf import settings  # noqa: E402

from kikipounamu.asgi_limits import BodySizeLimitMiddleware  # noqa: E402

# Room for the multipart envelope and the other form fields around the file.
_MULTIPART_OVERHEAD = 64 * 1024

application = BodySizeLimitMiddleware(
    django_application,
    max_body_bytes=settings.ASR_MAX_UPLOAD_BYTES + _MULTIPART_OVERHEAD,
    describe_limit=f"{settings.ASR_MAX_UPLOAD_BYTES / 1e6:.0f} MB",
)
