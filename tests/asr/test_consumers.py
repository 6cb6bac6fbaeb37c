"""WebSocket consumers through the real ASGI app and the real Redis channel layer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.files.base import ContentFile
from django.test import Client

from asr import services
from asr.models import Transcription
from asr.ws_tokens import ws_token_for_job
from kikipounamu.asgi import application
from tests.asr.test_api import wav_bytes
from tests.factories import UserFactory

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _own_media_root(settings: Any, tmp_path: Any) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


def session_cookie(user: Any) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


def make_job(owner: Any) -> Transcription:
    job = Transcription(owner=owner, original_filename="a.wav", task_id="t-1")
    job.audio.save(f"{job.id}.wav", ContentFile(wav_bytes(0.5)), save=False)
    job.save()
    return job


async def connect(
    path: str, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[WebsocketCommunicator, bool, Any]:
    communicator = WebsocketCommunicator(application, path, headers=headers or [])
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


async def test_owner_gets_a_snapshot_then_events_in_sequence() -> None:
    # given an owner watching their queued job
    owner = await database_sync_to_async(UserFactory)()
    job = await database_sync_to_async(make_job)(owner)
    cookie = await database_sync_to_async(session_cookie)(owner)
    ws, connected, _ = await connect(f"/ws/transcriptions/{job.id}/", [cookie])
    assert connected
    snapshot = await ws.receive_json_from(timeout=5)
    assert snapshot["type"] == "snapshot"
    assert snapshot["job"]["id"] == str(job.id)
    assert snapshot["job"]["status"] == "queued"
    assert snapshot["job"]["queue_position"] == 1
    start_seq = snapshot["job"]["seq"]

    # when a worker claims it and it fails
    claimed = await database_sync_to_async(services.transcription_claim)(
        transcription_id=str(job.id), task_id="t-1", hostname="w"
    )
    await database_sync_to_async(services.transcription_fail)(
        transcription=claimed, code="corrupt_audio", message="damaged"
    )

    # then the events arrive in order with growing sequence numbers and the job
    started = await ws.receive_json_from(timeout=5)
    failed = await ws.receive_json_from(timeout=5)
    assert (started["type"], started["event"], started["job"]["status"]) == (
        "event",
        "started",
        "running",
    )
    assert (failed["event"], failed["job"]["status"]) == ("failed", "failed")
    assert failed["job"]["error"] == {"code": "corrupt_audio", "message": "damaged"}
    assert start_seq < started["seq"] < failed["seq"]
    assert failed["job"]["seq"] == failed["seq"]
    await ws.disconnect()


async def test_feed_gets_snapshot_of_own_jobs_and_their_events() -> None:
    owner = await database_sync_to_async(UserFactory)()
    other = await database_sync_to_async(UserFactory)()
    mine = await database_sync_to_async(make_job)(owner)
    await database_sync_to_async(make_job)(other)
    cookie = await database_sync_to_async(session_cookie)(owner)
    ws, connected, _ = await connect("/ws/transcriptions/", [cookie])
    assert connected
    snapshot = await ws.receive_json_from(timeout=5)
    assert [job["id"] for job in snapshot["jobs"]] == [str(mine.id)]

    await database_sync_to_async(services.transcription_cancel)(transcription=mine)
    event = await ws.receive_json_from(timeout=5)
    assert (event["event"], event["job"]["id"], event["job"]["status"]) == (
        "cancelled",
        str(mine.id),
        "cancelled",
    )
    await ws.disconnect()


async def test_signed_token_from_the_api_opens_one_job_only() -> None:
    owner = await database_sync_to_async(UserFactory)()
    job = await database_sync_to_async(make_job)(owner)
    other_job = await database_sync_to_async(make_job)(owner)
    token = ws_token_for_job(job)

    ws, connected, _ = await connect(f"/ws/transcriptions/{job.id}/?token={token}")
    assert connected
    assert (await ws.receive_json_from(timeout=5))["type"] == "snapshot"
    await ws.disconnect()

    _, connected, code = await connect(
        f"/ws/transcriptions/{other_job.id}/?token={token}"
    )
    assert not connected
    assert code == 4403
    _, connected, _ = await connect(f"/ws/transcriptions/{job.id}/?token=forged{token}")
    assert not connected


async def test_expired_token_is_refused(settings: Any) -> None:
    owner = await database_sync_to_async(UserFactory)()
    job = await database_sync_to_async(make_job)(owner)
    token = ws_token_for_job(job)
    settings.WS_TOKEN_MAX_AGE = -1
    _, connected, code = await connect(f"/ws/transcriptions/{job.id}/?token={token}")
    assert (connected, code) == (False, 4403)


async def test_anonymous_and_other_users_are_refused_and_staff_allowed() -> None:
    owner, stranger, staff = await database_sync_to_async(
        lambda: (UserFactory(), UserFactory(), UserFactory(is_staff=True))
    )()
    job = await database_sync_to_async(make_job)(owner)
    path = f"/ws/transcriptions/{job.id}/"

    _, connected, code = await connect(path)
    assert (connected, code) == (False, 4403)
    _, connected, _ = await connect("/ws/transcriptions/")
    assert not connected
    stranger_cookie = await database_sync_to_async(session_cookie)(stranger)
    _, connected, _ = await connect(path, [stranger_cookie])
    assert not connected

    staff_cookie = await database_sync_to_async(session_cookie)(staff)
    ws, connected, _ = await connect(path, [staff_cookie])
    assert connected
    await ws.disconnect()


async def test_a_foreign_browser_origin_is_refused() -> None:
    owner = await database_sync_to_async(UserFactory)()
    job = await database_sync_to_async(make_job)(owner)
    cookie = await database_sync_to_async(session_cookie)(owner)
    _, connected, _ = await connect(
        f"/ws/transcriptions/{job.id}/", [cookie, (b"origin", b"https://evil.example")]
    )
    assert not connected
    ws, connected, _ = await connect(
        f"/ws/transcriptions/{job.id}/", [cookie, (b"origin", b"http://localhost:8000")]
    )
    assert connected
    await ws.disconnect()


async def test_heartbeats_are_sent(settings: Any) -> None:
    settings.WS_HEARTBEAT_SECONDS = 0.2
    owner = await database_sync_to_async(UserFactory)()
    cookie = await database_sync_to_async(session_cookie)(owner)
    ws, connected, _ = await connect("/ws/transcriptions/", [cookie])
    assert connected
    assert (await ws.receive_json_from(timeout=5))["type"] == "snapshot"
    beats = [await ws.receive_json_from(timeout=5) for _ in range(2)]
    assert beats == [{"type": "heartbeat"}, {"type": "heartbeat"}]
    await ws.disconnect()
    await asyncio.sleep(0)
