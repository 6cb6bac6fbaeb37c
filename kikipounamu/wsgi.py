"""WSGI entry point, for servers that cannot speak ASGI."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kikipounamu.settings")

application = get_wsgi_application()

# This machine's folders, secret key and embedded Redis (settings only declare them).
from kikipounamu import local  # noqa: E402

local.prepare()
