"""/ws/ops/: a stats snapshot for staff on connect, then another every few seconds."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from asr.ops import stats

logger = logging.getLogger(__name__)

FORBIDDEN = 4403


class OpsConsumer(AsyncJsonWebsocketConsumer):
    _loop: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_staff:
            await self.close(code=FORBIDDEN)
            return
        await self.accept()
        self._loop = asyncio.ensure_future(self._push())

    async def _push(self) -> None:
        # Polling, not events: the numbers (queue depth, rates) change continuously,
        # and a fresh snapshot each time also covers anything a client missed.
        while True:
            try:
                snapshot = await database_sync_to_async(stats.ops_snapshot)()
                await self.send_json({"type": "stats", "stats": snapshot})
            except Exception:
                logger.warning("ops dashboard: snapshot failed", exc_info=True)
            await asyncio.sleep(settings.OPS_DASHBOARD_INTERVAL)

    async def disconnect(self, code: int) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
