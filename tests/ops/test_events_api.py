"""GET /api/v1/transcriptions/{id}/events: the job's history, with the job's permissions."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from asr import services
from tests.asr.test_api import wav_bytes
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def client_for(user: Any) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def test_owner_and_staff_read_the_history_in_order_others_get_404() -> None:
    # given a job that was accepted, started and failed
    owner = UserFactory()
    job = services.transcription_create(
        owner=owner, audio=SimpleUploadedFile("clip.wav", wav_bytes())
    )
    claimed = services.transcription_claim(
        transcription_id=str(job.id), task_id=job.task_id, hostname="w@test"
    )
    assert claimed is not None
    services.transcription_fail(
        transcription=claimed, code="corrupt_audio", message="damaged"
    )
    url = f"/api/v1/transcriptions/{job.id}/events"

    # then the owner sees every step with growing sequence numbers
    events = client_for(owner).get(url).json()
    assert [e["kind"] for e in events] == ["accepted", "started", "failed"]
    assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})
    assert events[0]["data"]["source"] == "api"
    assert events[2]["data"] == {"code": "corrupt_audio"}
    # and the job links to it
    detail = client_for(owner).get(f"/api/v1/transcriptions/{job.id}").json()
    assert detail["links"]["events"].endswith(url)
    # staff too; a stranger is not told the job exists; anonymous: 401
    staff = UserFactory(is_staff=True)
    assert client_for(staff).get(url).json() == events
    stranger = client_for(UserFactory()).get(url)
    assert stranger.status_code == 404
    assert stranger.json()["error"]["code"] == "not_found"
    assert client_for(None).get(url).status_code == 401
    missing = "/api/v1/transcriptions/00000000-0000-0000-0000-000000000000/events"
    assert client_for(owner).get(missing).status_code == 404
