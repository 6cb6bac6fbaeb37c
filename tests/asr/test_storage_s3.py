"""Audio in an S3 bucket (a real SeaweedFS server, tests/s3_server.py): uploads,
reads, deletes, retention, and what clients and jobs get when the store is down or
an object is gone. No credential may show in an answer, a job row or a log."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from asr import storage
from asr.engines.synthetic import SyntheticEngine
from asr.models import Transcription
from asr.services import attempts
from asr.services import dispatch
from asr.services import processing
from asr.services.retention import retention_purge
from tests.asr.test_api import wav_bytes
from tests.factories import UserFactory
from tests.s3_server import S3Server


def s3_storages(server: S3Server, **options: Any) -> dict[str, Any]:
    """STORAGES as settings.py builds it from ``server.env()``."""
    return {
        "default": server.storage(
            # Fail fast while the server is down: one try, short time-outs.
            connect_timeout=1,
            read_timeout=5,
            max_attempts=1,
            **options,
        ),
        "staticfiles": {
            "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        },
    }


def keys(server: S3Server) -> set[str]:
    listing = server.client().list_objects_v2(Bucket=server.bucket)
    return {item["Key"] for item in listing.get("Contents", [])}


def upload(client: APIClient, seconds: float = 1.0, name: str = "a.wav") -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(
        "/api/v1/transcriptions",
        {"file": SimpleUploadedFile(name, wav_bytes(seconds), "audio/wav")},
        format="multipart",
    )


@pytest.fixture
def s3_settings(settings: Any, own_s3_server: S3Server, tmp_path: Any) -> S3Server:
    """This process's default storage is the test's own bucket; MEDIA_ROOT is an
    empty folder that must stay empty."""
    settings.STORAGES = s3_storages(own_s3_server)
    settings.MEDIA_ROOT = tmp_path / "media"
    return own_s3_server


@pytest.fixture
def client(transactional_db: Any, monkeypatch: pytest.MonkeyPatch) -> APIClient:
    # These tests run the worker's side in this process: a worker elsewhere (the
    # session's, whose storage is a folder) must not get the jobs' messages.
    monkeypatch.setattr(
        dispatch, "transcription_enqueue", lambda *, transcription: None
    )
    api = APIClient()
    api.force_authenticate(UserFactory())
    return api


def test_an_upload_is_an_object_and_deleting_the_job_deletes_it(
    s3_settings: S3Server, client: APIClient, settings: Any
) -> None:
    # given an upload to the API
    response = upload(client)
    assert response.status_code == 202, response.content
    job = Transcription.objects.get(pk=response.json()["id"])

    # then its audio is an object in the bucket, with the bytes sent, and no file
    assert keys(s3_settings) == {job.audio.name}
    body = s3_settings.client().get_object(
        Bucket=s3_settings.bucket, Key=job.audio.name
    )
    assert body["Body"].read() == wav_bytes(1.0)
    assert not (settings.MEDIA_ROOT).exists() or not any(settings.MEDIA_ROOT.iterdir())
    # and the API serves it from there
    audio = client.get(f"/api/v1/transcriptions/{job.pk}/audio")
    assert audio.status_code == 200
    assert b"".join(audio.streaming_content) == wav_bytes(1.0)

    # when the finished job is deleted
    Transcription.objects.filter(pk=job.pk).update(status="succeeded")
    assert client.delete(f"/api/v1/transcriptions/{job.pk}").status_code == 204

    # then its object is gone too
    assert keys(s3_settings) == set()


def test_retention_deletes_old_audio_objects(
    s3_settings: S3Server, client: APIClient
) -> None:
    old, new = (upload(client).json()["id"] for _ in range(2))
    Transcription.objects.filter(pk__in=[old, new]).update(status="succeeded")
    Transcription.objects.filter(pk=old).update(
        finished_at=timezone.now() - timedelta(days=10)
    )
    Transcription.objects.filter(pk=new).update(finished_at=timezone.now())

    counts = retention_purge(audio_days=7, job_days=0)

    assert counts["audio_deleted"] == 1
    assert keys(s3_settings) == {Transcription.objects.get(pk=new).audio.name}
    assert Transcription.objects.get(pk=old).audio.name == ""


def test_a_worker_decodes_the_object_and_succeeds(
    s3_settings: S3Server, client: APIClient
) -> None:
    job_id = upload(client, seconds=2.0).json()["id"]

    processing.transcription_process(
        transcription_id=job_id, task_id="t-1", hostname="w@h", engine=SyntheticEngine()
    )

    job = Transcription.objects.get(pk=job_id)
    assert job.status == "succeeded", (job.error_code, job.error_message)
    assert job.duration == pytest.approx(2.0, abs=0.01)


def test_store_down_at_upload_answers_503_with_retry_after_and_stores_nothing(
    s3_settings: S3Server, client: APIClient, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    with s3_settings.outage():
        response = upload(client)
        ready = client.get("/readyz")
    assert response.status_code == 503, response.content
    error = response.json()["error"]
    assert error["code"] == "storage_unavailable"
    assert "Nothing was stored" in error["message"]
    assert int(response["Retry-After"]) >= 1
    assert Transcription.objects.count() == 0
    assert keys(s3_settings) == set()
    # and readiness says which part is missing
    assert ready.status_code == 503
    assert ready.json()["checks"]["storage"]["ok"] is False
    # nothing a client or a log got names the credentials
    for text in (response.content.decode(), ready.content.decode(), caplog.text):
        assert s3_settings.secret_key not in text
        assert s3_settings.access_key not in text


def test_store_down_mid_job_is_retried_then_fails_storage_unavailable(
    s3_settings: S3Server, client: APIClient, settings: Any, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    job_id = upload(client).json()["id"]

    def attempt() -> None:
        # A Celery retry runs the same message again: the same task id.
        processing.transcription_process(
            transcription_id=job_id,
            task_id="t-1",
            hostname="w@h",
            engine=SyntheticEngine(),
        )

    with s3_settings.outage():
        # below the cap: the error goes to the task, whose autoretry runs it again
        for n in range(1, settings.ASR_MAX_ATTEMPTS):
            with pytest.raises(storage.StorageUnavailable):
                attempt()
            job = Transcription.objects.get(pk=job_id)
            assert (job.status, job.attempts) == ("running", n)
        # at the cap: failed, with a code that says so
        attempt()

    job = Transcription.objects.get(pk=job_id)
    assert job.status == "failed"
    assert job.error_code == attempts.STORAGE_UNAVAILABLE
    assert "audio store" in job.error_message
    for text in (job.error_message, str(job.meta), caplog.text):
        assert s3_settings.secret_key not in text
        assert s3_settings.access_key not in text
    # the audio is still there for a retry once the store is back
    assert keys(s3_settings) == {job.audio.name}


def test_an_object_gone_fails_the_job_audio_missing_at_once(
    s3_settings: S3Server, client: APIClient
) -> None:
    job_id = upload(client).json()["id"]
    job = Transcription.objects.get(pk=job_id)
    s3_settings.client().delete_object(Bucket=s3_settings.bucket, Key=job.audio.name)

    processing.transcription_process(
        transcription_id=job_id, task_id="t-1", hostname="w@h", engine=SyntheticEngine()
    )

    job.refresh_from_db()
    assert (job.status, job.error_code, job.attempts) == ("failed", "audio_missing", 1)
    # and asking for the audio says the same
    assert client.get(f"/api/v1/transcriptions/{job_id}/audio").status_code == 404


def test_server_side_encryption_is_asked_for_on_every_object(
    settings: Any, own_s3_server: S3Server, client: APIClient
) -> None:
    settings.STORAGES = s3_storages(own_s3_server, sse="AES256")
    job_id = upload(client).json()["id"]
    name = Transcription.objects.get(pk=job_id).audio.name

    head = own_s3_server.client().head_object(Bucket=own_s3_server.bucket, Key=name)

    assert head.get("ServerSideEncryption") == "AES256"


def requests_seen(server: S3Server) -> list[tuple[str, str]]:
    """(HTTP method, thread name) of every request this process's storage sends
    from now on."""
    import threading

    from django.core.files.storage import default_storage

    seen: list[tuple[str, str]] = []
    default_storage.connection.meta.client.meta.events.register(
        "before-send.s3",
        lambda request, **_: seen.append(
            (request.method, threading.current_thread().name)
        ),
    )
    return seen


def test_a_short_upload_is_one_put_and_its_read_one_get_in_the_callers_thread(
    s3_settings: S3Server,
) -> None:
    # (bench/pipeline.py --only storage: the HEADs and s3transfer's threads were
    # most of what S3 added to a short job)
    import threading

    data = wav_bytes(1.0)
    seen = requests_seen(s3_settings)
    me = threading.current_thread().name

    storage.audio_save("probe/short.wav", data)
    assert seen == [("PUT", me)]
    seen.clear()

    assert storage.audio_read("probe/short.wav") == data
    assert seen == [("GET", me)]


def test_an_object_larger_than_memory_allows_is_read_whole_through_a_file_on_disk(
    settings: Any, own_s3_server: S3Server
) -> None:
    import os

    settings.STORAGES = s3_storages(own_s3_server, max_memory_size=100_000)
    data = os.urandom(1_000_000)
    storage.audio_save("probe/large.bin", data)

    with storage.audio_open("probe/large.bin") as fh:
        assert fh.read() == data
        # spilled past max_memory_size: a real file, not bytes in memory
        assert fh.file._rolled
