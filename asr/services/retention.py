"""Retention: old audio goes first, old job rows later (settings ASR_RETENTION_*)."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import ProtectedError
from django.db.models import Q
from django.utils import timezone

from asr.models import Transcription
from asr.services import lifecycle

logger = logging.getLogger(__name__)

# Bounded work per run: a first run over a large backlog must not hold a worker for
# long; the next run picks up the rest.
BATCH = 1000


def retention_purge(
    *, audio_days: float | None = None, job_days: float | None = None
) -> dict[str, int]:
    """Delete the audio of finished jobs older than ``audio_days`` and finished job
    rows (history included) older than ``job_days``. 0 keeps forever. Queued and
    running jobs are never touched."""
    audio_days = settings.ASR_RETENTION_AUDIO_DAYS if audio_days is None else audio_days
    job_days = settings.ASR_RETENTION_JOB_DAYS if job_days is None else job_days
    now = timezone.now()
    counts = {"audio_deleted": 0, "jobs_deleted": 0}
    finished = Transcription.objects.filter(status__in=Transcription.FINISHED)

    def older_than(days: float) -> Q:
        cutoff = now - timedelta(days=days)
        # A job cancelled before it ran may have no finished_at.
        return Q(finished_at__lt=cutoff) | Q(
            finished_at__isnull=True, created_at__lt=cutoff
        )

    if job_days > 0:
        for job in finished.filter(older_than(job_days)).order_by("created_at")[:BATCH]:
            try:
                lifecycle.transcription_delete(transcription=job)
                counts["jobs_deleted"] += 1
            except ProtectedError:
                logger.warning("job %s: kept past retention, still referenced", job.pk)
    if audio_days > 0:
        for job in (
            finished.filter(older_than(audio_days))
            .exclude(audio="")
            .order_by("created_at")[:BATCH]
        ):
            if lifecycle.transcription_delete_audio(transcription=job):
                counts["audio_deleted"] += 1
    if any(counts.values()):
        logger.info("retention: %s", counts)
    return counts
