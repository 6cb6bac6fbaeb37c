"""The periodic reconciler's rules (beat runs ``asr.reconcile``): jobs and chunks
that no message in the broker will ever run are sent again, and those past their
deadline fail ``timeout``."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.utils import timezone

from asr.events import transcription_event_record
from asr.models import Transcription
from asr.models import TranscriptionChunk
from asr.models import TranscriptionEvent
from asr.services import attempts
from asr.services import claim
from asr.services import dispatch
from asr.services import fanout

logger = logging.getLogger(__name__)

Status = Transcription.Status
ChunkStatus = TranscriptionChunk.Status
Kind = TranscriptionEvent.Kind


def transcription_reconcile(
    *, broker_task_ids: set[str], min_age: float = 30.0
) -> dict[str, int]:
    """Re-send jobs whose message the broker lost; fail running ones past deadline.

    ``broker_task_ids`` are the task ids held by the broker (waiting or unacked). A
    queued or running job whose holding message (``claim.holder_task_id``: its own,
    or the batch's it runs in) is not among them has no message that would ever run
    it: Redis restarted without its data, or a hard time limit killed it.
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=min_age)
    counts = {"requeued": 0, "timed_out": 0}
    candidates = (
        Transcription.objects.filter(
            status__in=[Status.QUEUED, Status.RUNNING],
            created_at__lt=cutoff,
            # Fanned-out jobs have chunk messages, not this one: see
            # fanout_reconcile.
            chunks__isnull=True,
        )
        # A live session runs while it streams: live_reconcile's rule.
        .exclude(source=Transcription.Source.LIVE)
        .exclude(batch_task_id="", task_id__in=broker_task_ids)
        .exclude(status=Status.RUNNING, batch_task_id__in=broker_task_ids)
    )
    for job in candidates.iterator():
        if job.status == Status.RUNNING and job.deadline_at and job.deadline_at < now:
            counts["timed_out"] += attempts.transcription_fail_unheld(
                Transcription.objects.filter(
                    pk=job.pk, status=Status.RUNNING, attempts=job.attempts
                ),
                transcription_id=job.pk,
                failure=attempts.timed_out(stopped=True),
            )
            continue
        if job.status == Status.RUNNING and job.started_at and job.started_at > cutoff:
            continue
        if job.status == Status.RUNNING and job.batch_task_id:
            # The batch's message is gone: its jobs go back to the queue.
            counts["requeued"] += claim.transcription_batch_release(
                task_id=job.batch_task_id
            )
            continue
        logger.warning("job %s: no message in the broker, re-sending", job.id)
        transcription_event_record(
            transcription_id=job.pk, kind=Kind.REQUEUED, data={"reason": "message lost"}
        )
        dispatch.transcription_enqueue(transcription=job, again=True)
        counts["requeued"] += 1
    return counts


def fanout_reconcile(
    *, broker_task_ids: set[str], min_age: float = 30.0
) -> dict[str, int]:
    """Fanned-out jobs (``transcription_reconcile`` skips them).

    A pending chunk whose task id the broker does not hold has no message that would
    run it (Redis lost its data, an enqueue failed): its message is sent again. A
    running one past its deadline timed out: the job fails ``timeout``. A job whose
    chunks all succeeded is merged.
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=min_age)
    counts = {"chunks_requeued": 0, "chunks_timed_out": 0, "merged": 0}
    jobs = (
        Transcription.objects.filter(status=Status.RUNNING, chunks__isnull=False)
        .values_list("pk", flat=True)
        .distinct()
    )
    for job_id in list(jobs):
        chunks = list(TranscriptionChunk.objects.filter(transcription_id=job_id))
        if all(chunk.status == ChunkStatus.SUCCEEDED for chunk in chunks):
            counts["merged"] += fanout.transcription_merge_if_done(
                transcription_id=job_id
            )
            continue
        overdue = _overdue(chunks, broker_task_ids=broker_task_ids, now=now)
        if overdue is not None:
            counts["chunks_timed_out"] += fanout.chunk_fail(
                chunk=overdue,
                failure=attempts.timed_out(
                    what=fanout.chunk_what(overdue), stopped=True
                ),
            )
            continue
        counts["chunks_requeued"] += len(
            fanout.chunks_resend_lost(
                transcription_id=job_id,
                held=broker_task_ids,
                cutoff=cutoff,
                reason="message lost",
            )
        )
    return counts


def _overdue(
    chunks: list[TranscriptionChunk], *, broker_task_ids: set[str], now: Any
) -> TranscriptionChunk | None:
    """A running chunk past its deadline whose message is gone, if any."""
    for chunk in chunks:
        if (
            chunk.status == ChunkStatus.RUNNING
            and chunk.task_id not in broker_task_ids
            and chunk.deadline_at is not None
            and chunk.deadline_at < now
        ):
            return chunk
    return None
