"""The REST API in-process: permissions, listing, cancel/delete, downloads, errors."""

from __future__ import annotations

import io
import math
import struct
import wave
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.test import override_settings
from rest_framework.test import APIClient

from asr.models import Transcription
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/transcriptions"


@pytest.fixture(autouse=True)
def _own_media_root(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


def wav_bytes(seconds: float = 1.0) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(
            b"".join(
                struct.pack("<h", int(4000 * math.sin(i / 10)))
                for i in range(int(seconds * 16_000))
            )
        )
    return buf.getvalue()


def upload(name: str = "clip.wav", data: bytes | None = None) -> io.BytesIO:
    f = io.BytesIO(wav_bytes() if data is None else data)
    f.name = name
    return f


def make_job(owner: Any, **fields: Any) -> Transcription:
    job = Transcription(owner=owner, original_filename="x.wav", **fields)
    job.audio.save(f"{job.id}.wav", ContentFile(wav_bytes(0.2)), save=False)
    job.save()
    return job


def test_anonymous_requests_get_401_with_an_error_body() -> None:
    response = APIClient().get(URL)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Token")


def test_another_users_job_is_404_and_staff_see_it(user: Any) -> None:
    other = UserFactory()
    job = make_job(other)
    client = APIClient()
    client.force_authenticate(user)
    assert client.get(f"{URL}/{job.id}").status_code == 404
    assert client.delete(f"{URL}/{job.id}").status_code == 404
    assert client.get(f"{URL}/{job.id}/transcript.txt").status_code == 404
    assert client.get(URL).json()["count"] == 0

    staff = APIClient()
    staff.force_authenticate(UserFactory(is_staff=True))
    assert staff.get(f"{URL}/{job.id}").status_code == 200
    assert staff.get(URL).json()["count"] == 1


def test_unknown_and_malformed_ids_are_404(api_client: APIClient) -> None:
    assert api_client.get(f"{URL}/not-a-uuid").status_code == 404
    missing = api_client.get(f"{URL}/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_submit_answers_202_and_stores_under_a_generated_name(
    api_client: APIClient,
    user: Any,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        response = api_client.post(
            URL,
            {"file": upload("../../etc/passwd.wav"), "language": "en"},
            format="multipart",
        )
    assert response.status_code == 202, response.json()
    body = response.json()
    assert response["Location"] == body["links"]["self"]
    # the task is enqueued (and the event announced) only once the row is committed
    assert len(callbacks) == 2
    job = Transcription.objects.get(pk=body["id"])
    assert job.owner == user
    assert job.original_filename == "passwd.wav"
    assert job.language == "en"
    assert job.audio.name.endswith(f"{job.id}.wav")
    assert (
        Path(job.audio.path)
        .resolve()
        .is_relative_to(Path(settings.MEDIA_ROOT).resolve())
    )
    assert len(job.audio_sha256) == 64


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        ({}, 400, "file_missing"),
        ({"file": "not a file"}, 400, "file_missing"),
        ({"file": "AUDIO", "language": "klingon"}, 400, "invalid_language"),
        ({"file": "EMPTY"}, 400, "empty_audio"),
        ({"file": "PNG"}, 422, "no_audio_stream"),
        ({"file": "RANDOM"}, 415, "unsupported_format"),
    ],
)
def test_bad_submissions_get_a_clear_4xx_and_write_nothing(
    api_client: APIClient, settings: Any, data: dict[str, str], status: int, code: str
) -> None:
    payload: dict[str, Any] = dict(data)
    if payload.get("file") == "AUDIO":
        payload["file"] = upload()
    elif payload.get("file") == "EMPTY":
        payload["file"] = upload(data=b"")
    elif payload.get("file") == "PNG":
        payload["file"] = upload("x.png", data=_png())
    elif payload.get("file") == "RANDOM":
        payload["file"] = upload("x.ogg", data=bytes(range(256)) * 40)
    response = api_client.post(URL, payload, format="multipart")
    assert response.status_code == status, response.json()
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert Transcription.objects.count() == 0
    assert not any(p.is_file() for p in Path(settings.MEDIA_ROOT).rglob("*"))


def _png() -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="image2pipe") as out:
        stream = out.add_stream("png", rate=1)
        stream.width = stream.height = 8
        stream.pix_fmt = "rgb24"
        frame = av.VideoFrame(8, 8, "rgb24")
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


@override_settings(ASR_MAX_UPLOAD_BYTES=1000)
def test_oversize_upload_is_413(api_client: APIClient) -> None:
    response = api_client.post(URL, {"file": upload()}, format="multipart")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


def test_json_body_is_415(api_client: APIClient) -> None:
    response = api_client.post(URL, {"file": "x"}, format="json")
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_list_filters_by_status_and_paginates(api_client: APIClient, user: Any) -> None:
    for _ in range(3):
        make_job(user, status=Transcription.Status.SUCCEEDED)
    make_job(user, status=Transcription.Status.QUEUED)
    done = api_client.get(URL, {"status": "succeeded", "page_size": 2}).json()
    assert done["count"] == 3
    assert len(done["results"]) == 2
    assert done["next"]
    assert api_client.get(URL, {"status": "queued"}).json()["count"] == 1
    bad = api_client.get(URL, {"status": "sleeping"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid"


def test_delete_cancels_a_queued_job(api_client: APIClient, user: Any) -> None:
    job = make_job(user, status=Transcription.Status.QUEUED)
    response = api_client.delete(f"{URL}/{job.id}")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert Transcription.objects.get(pk=job.pk).status == "cancelled"
    # a second DELETE removes the job, now finished
    assert api_client.delete(f"{URL}/{job.id}").status_code == 204
    assert not Transcription.objects.filter(pk=job.pk).exists()


def test_delete_removes_a_finished_job_and_its_audio(
    api_client: APIClient, user: Any, django_capture_on_commit_callbacks: Any
) -> None:
    job = make_job(user, status=Transcription.Status.SUCCEEDED)
    path = Path(job.audio.path)
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.delete(f"{URL}/{job.id}")
    assert response.status_code == 204
    assert not Transcription.objects.filter(pk=job.pk).exists()
    assert not path.exists()


def test_running_job_can_be_neither_cancelled_nor_deleted(
    api_client: APIClient, user: Any
) -> None:
    job = make_job(user, status=Transcription.Status.RUNNING)
    response = api_client.delete(f"{URL}/{job.id}")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_finished"


def test_transcript_downloads(api_client: APIClient, user: Any) -> None:
    job = make_job(
        user,
        status=Transcription.Status.SUCCEEDED,
        text="Hello there. General Kenobi.",
        segments=[
            {"start": 0.0, "end": 1.25, "text": "Hello there."},
            {"start": 1.25, "end": 3661.5, "text": "General Kenobi."},
        ],
    )
    srt = api_client.get(f"{URL}/{job.id}/transcript.srt")
    assert srt.status_code == 200
    assert srt["Content-Disposition"] == 'attachment; filename="x.srt"'
    assert srt.content.decode() == (
        "1\n00:00:00,000 --> 00:00:01,250\nHello there.\n\n"
        "2\n00:00:01,250 --> 01:01:01,500\nGeneral Kenobi.\n\n"
    )
    vtt = api_client.get(f"{URL}/{job.id}/transcript.vtt").content.decode()
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.250\nHello there.")
    assert "01:01:01.500" in vtt
    txt = api_client.get(f"{URL}/{job.id}/transcript.txt").content.decode()
    assert txt == "Hello there. General Kenobi.\n"
    data = api_client.get(f"{URL}/{job.id}/transcript.json").json()
    assert data["segments"][1]["text"] == "General Kenobi."


def test_transcript_of_an_unfinished_job_is_409(
    api_client: APIClient, user: Any
) -> None:
    job = make_job(user, status=Transcription.Status.QUEUED)
    response = api_client.get(f"{URL}/{job.id}/transcript.txt")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_ready"


def test_schema_and_swagger_ui_are_served(client: Any) -> None:
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/transcriptions" in schema.content
    assert client.get("/api/docs/").status_code == 200


def test_links_include_audio_retry_and_a_signed_websocket(
    api_client: APIClient, user: Any
) -> None:
    from asr.ws_tokens import ws_token_job_id

    job = make_job(user, status=Transcription.Status.QUEUED)
    links = api_client.get(f"{URL}/{job.id}").json()["links"]
    assert links["audio"].endswith(f"/api/v1/transcriptions/{job.id}/audio")
    assert links["retry"].endswith(f"/api/v1/transcriptions/{job.id}/retry")
    assert links["websocket"].startswith(
        f"ws://testserver/ws/transcriptions/{job.id}/?token="
    )
    token = links["websocket"].split("token=", 1)[1]
    assert ws_token_job_id(token) == str(job.id)


def test_audio_is_served_to_its_owner_only(api_client: APIClient, user: Any) -> None:
    job = make_job(user, status=Transcription.Status.SUCCEEDED)
    response = api_client.get(f"{URL}/{job.id}/audio")
    assert response.status_code == 200
    assert response["Content-Type"] == "audio/wav"
    assert b"".join(response.streaming_content).startswith(b"RIFF")
    stranger = APIClient()
    stranger.force_authenticate(UserFactory())
    assert stranger.get(f"{URL}/{job.id}/audio").status_code == 404


def test_retry_requeues_a_failed_job_as_new(
    api_client: APIClient, user: Any, django_capture_on_commit_callbacks: Any
) -> None:
    job = make_job(
        user,
        status=Transcription.Status.FAILED,
        error_code="timeout",
        error_message="slow",
        attempts=2,
    )
    old_task = job.task_id
    with django_capture_on_commit_callbacks() as callbacks:
        response = api_client.post(f"{URL}/{job.id}/retry")
    assert response.status_code == 202
    body = response.json()
    assert (body["status"], body["attempts"], body["error"]) == ("queued", 0, None)
    assert body["task_id"] != old_task
    assert len(callbacks) == 2  # enqueue + event announcement, after commit
    assert list(job.events.values_list("kind", flat=True)) == ["retried"]

    # a job that is not failed or cancelled cannot be retried
    again = api_client.post(f"{URL}/{job.id}/retry")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_retryable"
