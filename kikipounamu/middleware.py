"""Middleware of the project itself."""

from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction
from asgiref.sync import markcoroutinefunction
from asgiref.sync import sync_to_async
from whitenoise.middleware import WhiteNoiseMiddleware as _WhiteNoiseMiddleware


class WhiteNoiseMiddleware(_WhiteNoiseMiddleware):
    """WhiteNoise, usable in Django's async middleware chain.

    WhiteNoise's own middleware is sync only, and under ASGI one sync-only middleware
    costs every request two more hops between the event loop and a thread (Django
    adapts the chain around it). Finding a static file is a dictionary lookup, safe
    on the event loop; serving one opens it, which goes to a thread. What WhiteNoise
    does is unchanged.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any = None) -> None:
        super().__init__(get_response)
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request: Any) -> Any:
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)
