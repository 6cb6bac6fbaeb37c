"""Backpressure (503 busy + Retry-After), rate limits (429) and ETAs, in-process."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient

from asr import services
from asr.models import Transcription
from asr.ops import redis_state
from kikipounamu.errors import ApplicationError
from tests.asr.test_api import make_job
from tests.asr.test_api import upload
from tests.asr.test_api import wav_bytes
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/transcriptions"


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def finished_jobs(owner: Any, n: int, seconds: float) -> None:
    now = timezone.now()
    for _ in range(n):
        make_job(
            owner,
            status=Transcription.Status.SUCCEEDED,
            started_at=now - timedelta(seconds=seconds),
            finished_at=now,
            processing_seconds=seconds,
            duration=seconds * 2,
            real_time_factor=0.5,
        )


def test_submissions_under_the_limit_are_accepted(
    settings: Any, fill_queue: Any
) -> None:
    settings.ASR_MAX_QUEUE_DEPTH = 3
    fill_queue("asr", 2)
    response = client_for(UserFactory()).post(URL, {"file": upload()})
    assert response.status_code == 202


def test_a_full_queue_refuses_with_503_retry_after_and_stores_nothing(
    settings: Any, fill_queue: Any, tmp_path: Path
) -> None:
    # given a queue at its limit and no recent jobs to estimate from
    settings.ASR_MAX_QUEUE_DEPTH = 3
    settings.ASR_BUSY_RETRY_AFTER = 42
    fill_queue("asr", 3)

    # when a client submits
    response = client_for(UserFactory()).post(URL, {"file": upload()})

    # then it is told to come back, and nothing was kept
    assert response.status_code == 503
    assert response["Retry-After"] == "42"
    error = response.json()["error"]
    assert error["code"] == "busy"
    assert error["detail"] == {"retry_after": 42, "queue_depth": 3}
    assert "Try again in about 42 seconds" in error["message"]
    assert Transcription.objects.count() == 0
    media = Path(settings.MEDIA_ROOT)
    assert not media.exists() or not any(p.is_file() for p in media.rglob("*"))


def test_retry_after_is_estimated_from_recent_jobs(
    settings: Any, fill_queue: Any
) -> None:
    # given jobs that took 4 s each and one asr worker with 2 processes
    settings.ASR_MAX_QUEUE_DEPTH = 2
    finished_jobs(UserFactory(), 3, seconds=4.0)
    redis_state.worker_heartbeat(
        hostname="w1@test", queues=["asr"], concurrency=2, ttl=30
    )
    fill_queue("asr", 5)
    # when the bots door asks before taking a voice message
    with pytest.raises(ApplicationError) as refused:
        services.admission_check()
    # then: 4 messages over the limit, a slot every 2 s
    assert refused.value.status_code == 503
    assert refused.value.extra["retry_after"] == 8


def test_other_doors_are_not_refused_by_transcription_create(
    settings: Any, fill_queue: Any
) -> None:
    # the Telegram door checks admission itself, before it downloads anything
    settings.ASR_MAX_QUEUE_DEPTH = 1
    fill_queue("asr", 1)
    job = services.transcription_create(
        owner=None,
        audio=SimpleUploadedFile("clip.wav", wav_bytes()),
        source=Transcription.Source.TELEGRAM,
    )
    assert job.status == "queued"


def test_queued_jobs_report_position_and_eta(settings: Any, broker_prefix: str) -> None:
    owner = UserFactory()
    finished_jobs(owner, 2, seconds=10.0)  # no live worker: one slot assumed
    first = make_job(owner)
    second = make_job(owner)
    body = client_for(owner).get(f"{URL}/{second.id}").json()
    assert (body["queue_position"], body["eta_seconds"]) == (2, 20)
    body = client_for(owner).get(f"{URL}/{first.id}").json()
    assert (body["queue_position"], body["eta_seconds"]) == (1, 10)
    done = client_for(owner).get(URL).json()["results"][-1]
    assert (done["status"], done["eta_seconds"]) == ("succeeded", None)


def test_eta_is_null_with_nothing_to_estimate_from(broker_prefix: str) -> None:
    owner = UserFactory()
    job = make_job(owner)
    body = client_for(owner).get(f"{URL}/{job.id}").json()
    assert (body["queue_position"], body["eta_seconds"]) == (1, None)


def test_submissions_past_the_rate_limit_get_429_with_retry_after(
    settings: Any,
) -> None:
    settings.API_THROTTLE_SUBMIT = "2/min"
    client = client_for(UserFactory())
    codes = [client.post(URL, {"file": upload()}).status_code for _ in range(3)]
    assert codes == [202, 202, 429]
    response = client.post(URL, {"file": upload()})
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 60
    assert response.json()["error"]["code"] == "throttled"
    # reads are not submissions
    assert client.get(URL).status_code == 200
    # and the limit is per user
    assert client_for(UserFactory()).post(URL, {"file": upload()}).status_code == 202


def test_every_api_call_has_a_per_user_limit(settings: Any) -> None:
    settings.API_THROTTLE_USER = "3/min"
    client = client_for(UserFactory())
    codes = [client.get(URL).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


def test_upload_page_session_posts_are_refused_the_same_way(
    settings: Any, fill_queue: Any, staff_user: Any
) -> None:
    settings.ASR_MAX_QUEUE_DEPTH = 1
    fill_queue("asr", 1)
    client = APIClient()
    client.force_login(staff_user)
    f = io.BytesIO(upload().getvalue())
    f.name = "page.wav"
    response = client.post(URL, {"file": f})
    assert response.status_code == 503
    assert response["Retry-After"]


def test_with_redis_down_the_api_still_answers(
    settings: Any, broker_prefix: str
) -> None:
    # rate limits fail open, and admission counts queued jobs in the database
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
        }
    }
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    settings.ASR_MAX_QUEUE_DEPTH = 1
    owner = UserFactory()
    client = client_for(owner)
    assert client.get(URL).status_code == 200
    assert client.post(URL, {"file": upload()}).status_code == 202
    refused = client.post(URL, {"file": upload()})
    assert refused.status_code == 503
    assert refused.json()["error"]["detail"]["queue_depth"] == 1
