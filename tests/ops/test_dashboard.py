"""The staff ops dashboard: the page, and its WebSocket of stats snapshots."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from asr.ops import redis_state
from kikipounamu.asgi import application
from tests.asr.test_api import make_job
from tests.asr.test_consumers import session_cookie
from tests.factories import UserFactory


@pytest.mark.django_db
def test_the_page_is_for_staff_only() -> None:
    client = Client()
    assert client.get("/ops/").status_code == 302  # to the sign-in page
    client.force_login(UserFactory())
    assert client.get("/ops/").status_code == 403
    client.force_login(UserFactory(is_staff=True))
    response = client.get("/ops/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "/static/asr/ops.js" in body
    assert "/admin/asr/transcription/?status__exact=failed" in body


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_staff_get_stats_snapshots_others_are_refused(
    settings: Any, fill_queue: Any
) -> None:
    settings.OPS_DASHBOARD_INTERVAL = 0.2
    staff, user = await database_sync_to_async(
        lambda: (UserFactory(is_staff=True), UserFactory())
    )()
    await database_sync_to_async(make_job)(user)
    fill_queue("asr", 2)
    redis_state.worker_heartbeat(
        hostname="w@test", queues=["asr"], concurrency=1, ttl=30
    )

    cookie = await database_sync_to_async(session_cookie)(user)
    ws = WebsocketCommunicator(application, "/ws/ops/", headers=[cookie])
    connected, code = await ws.connect(timeout=5)
    assert (connected, code) == (False, 4403)

    cookie = await database_sync_to_async(session_cookie)(staff)
    ws = WebsocketCommunicator(application, "/ws/ops/", headers=[cookie])
    connected, _ = await ws.connect(timeout=5)
    assert connected
    first = await ws.receive_json_from(timeout=10)
    assert first["type"] == "stats"
    stats = first["stats"]
    assert stats["queues"]["asr"] == 2
    assert stats["jobs"]["queued"] == 1
    assert [w["hostname"] for w in stats["workers"]] == ["w@test"]
    assert len(stats["history"]) == 60
    assert set(stats["rtf"]) == {"p50", "p95"}
    # and it keeps coming
    fill_queue("asr", 1)
    second = await ws.receive_json_from(timeout=10)
    assert second["stats"]["queues"]["asr"] == 3
    await ws.disconnect()
