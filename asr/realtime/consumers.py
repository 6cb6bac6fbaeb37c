"""WebSocket consumers of jobs: thin; who may watch and what they get is in
``asr.realtime.jobs``."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from asr.realtime import jobs
from asr.ws_tokens import token_allows_job
from kikipounamu import json_input

# Close codes (4000-4999 are the application's): a client must not retry these.
FORBIDDEN = 4403
NOT_FOUND = 4404


# Close codes of RFC 6455 for frames a client should not have sent.
UNSUPPORTED_DATA = 1003
INVALID_PAYLOAD = 1007


class _HeartbeatMixin(AsyncJsonWebsocketConsumer):
    _heartbeat: asyncio.Task[None] | None = None

    async def receive(
        self,
        text_data: str | None = None,
        bytes_data: bytes | None = None,
        **kwargs: Any,
    ) -> None:
        # These sockets only send; what a client sends is read with bounds and
        # otherwise ignored. Channels' own decode would end the consumer with a
        # server error on a frame that is not JSON, or is nested too deeply.
        if text_data is None:
            await self.close(
                code=UNSUPPORTED_DATA, reason="This socket takes JSON text frames only."
            )
            return
        try:
            content = json_input.loads(text_data)
        except json_input.JSONInputError as exc:
            await self.close(code=INVALID_PAYLOAD, reason=str(exc)[:120])
            return
        await self.receive_json(content, **kwargs)

    def start_heartbeat(self) -> None:
        self._heartbeat = asyncio.ensure_future(self._beat())

    async def _beat(self) -> None:
        # Lets a client notice a dead connection (no message for two intervals)
        # even where a proxy swallows protocol-level pings.
        while True:
            await asyncio.sleep(settings.WS_HEARTBEAT_SECONDS)
            await self.send_json({"type": "heartbeat"})

    async def disconnect(self, code: int) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def job_event(self, message: dict[str, Any]) -> None:
        await self.send_json(
            {
                "type": "event",
                "event": message["event"],
                "seq": message["seq"],
                "job": message["job"],
            }
        )

    async def join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined = [*getattr(self, "groups_joined", []), group]


class JobConsumer(_HeartbeatMixin):
    """/ws/transcriptions/<id>/: one job's snapshot, then its events."""

    async def connect(self) -> None:
        job_id = str(self.scope["url_route"]["kwargs"]["transcription_id"])
        query = parse_qs(self.scope.get("query_string", b"").decode())
        token = (query.get("token") or [None])[0]
        # A valid signed token needs no database read here: a job that is gone is
        # found by the snapshot below (NOT_FOUND). One thread hop, and one SQLite
        # connection opened, fewer per connection (a reconnect storm is made of them).
        allowed = token_allows_job(
            token=token, transcription_id=job_id
        ) or await database_sync_to_async(jobs.can_watch_job)(
            user=self.scope.get("user"), token=None, transcription_id=job_id
        )
        if not allowed:
            await self.close(code=FORBIDDEN)  # before accept: the handshake gets 403
            return
        # Join before reading the snapshot, so no event falls between the two; the
        # client drops events whose seq is not newer than the snapshot's.
        await self.join(jobs.job_group(job_id))
        await self.accept()
        snapshot = await database_sync_to_async(jobs.job_snapshot)(job_id)
        if snapshot is None:
            await self.close(code=NOT_FOUND)
            return
        await self.send_json({"type": "snapshot", "job": snapshot})
        self.start_heartbeat()


class FeedConsumer(_HeartbeatMixin):
    """/ws/transcriptions/: the signed-in user's recent jobs, then their events."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=FORBIDDEN)
            return
        await self.join(jobs.user_group(user.pk))
        await self.accept()
        feed = await database_sync_to_async(jobs.feed_snapshot)(user)
        await self.send_json({"type": "snapshot", "jobs": feed})
        self.start_heartbeat()
