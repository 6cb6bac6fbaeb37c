"""Retention: old audio deleted, old finished jobs deleted, live jobs untouched."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from asr.models import Transcription
from asr.services.retention import retention_purge
from asr.tasks import retention
from tests.asr.test_api import make_job
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


def days_ago(n: float) -> Any:
    return timezone.now() - timedelta(days=n)


def test_old_audio_then_old_jobs_go_live_jobs_stay(settings: Any) -> None:
    owner = UserFactory()
    ancient = make_job(owner, status="succeeded", finished_at=days_ago(400))
    old = make_job(owner, status="succeeded", finished_at=days_ago(40), text="kept")
    old_failed = make_job(owner, status="failed", finished_at=days_ago(40))
    fresh = make_job(owner, status="succeeded", finished_at=days_ago(1))
    cancelled = make_job(owner, status="cancelled", created_at=days_ago(500))
    stuck = make_job(owner, created_at=days_ago(500))  # still queued: never touched
    ancient_audio = ancient.audio.name
    old_audio = old.audio.name

    counts = retention_purge(audio_days=30, job_days=365)

    assert counts == {"jobs_deleted": 2, "audio_deleted": 2}
    remaining = set(Transcription.objects.values_list("pk", flat=True))
    assert remaining == {old.pk, old_failed.pk, fresh.pk, stuck.pk}
    assert not default_storage.exists(ancient_audio)
    assert not default_storage.exists(old_audio)
    old.refresh_from_db()
    assert (old.audio.name, old.text) == ("", "kept")
    fresh.refresh_from_db()
    assert default_storage.exists(fresh.audio.name)
    stuck.refresh_from_db()
    assert default_storage.exists(stuck.audio.name)
    assert not Transcription.objects.filter(pk=cancelled.pk).exists()


def test_zero_keeps_forever_and_the_beat_task_uses_settings(settings: Any) -> None:
    job = make_job(UserFactory(), status="succeeded", finished_at=days_ago(9999))
    settings.ASR_RETENTION_AUDIO_DAYS = 0
    settings.ASR_RETENTION_JOB_DAYS = 0
    assert retention() == {"audio_deleted": 0, "jobs_deleted": 0}
    settings.ASR_RETENTION_AUDIO_DAYS = 10
    assert retention() == {"audio_deleted": 1, "jobs_deleted": 0}
    assert Transcription.objects.filter(pk=job.pk).exists()
    assert "asr-retention" in settings.CELERY_BEAT_SCHEDULE
