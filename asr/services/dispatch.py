"""A job's and a chunk's messages: the time limits their audio earns, and sending
them (through ``kikipounamu.dispatch``, by task name)."""

from __future__ import annotations

from django.conf import settings

from asr.models import Transcription
from asr.models import TranscriptionChunk
from kikipounamu import dispatch

TRANSCRIBE = "asr.transcribe"
TRANSCRIBE_CHUNK = "asr.transcribe_chunk"

# Message priorities, to put a job sent again ahead of the queue. kombu's Redis
# transport keeps a list per priority step (0, 3, 6, 9; 0 first) and a worker pops
# the first non-empty one: new jobs go to step 3, and a job given back (its worker
# died, its message was lost) to step 0, so it runs next rather than behind every
# job queued since. https://docs.celeryq.dev/en/stable/userguide/routing.html#redis-message-priorities
PRIORITY_NEW = 3
PRIORITY_AGAIN = 0


def transcription_time_limits(*, duration_hint: float | None) -> tuple[float, float]:
    """(soft, hard) time limits in seconds for one transcribe task.

    A header's duration is only a hint, so an unknown one gets the largest budget;
    a file that lies about being short runs into the soft limit and fails `timeout`.
    """
    duration = (
        duration_hint
        if duration_hint and duration_hint > 0
        else settings.ASR_MAX_DURATION_SECONDS
    )
    soft = min(
        settings.ASR_TIME_LIMIT_BASE + duration * settings.ASR_TIME_LIMIT_RTF,
        settings.ASR_TIME_LIMIT_MAX,
    )
    return soft, soft + settings.ASR_TIME_LIMIT_GRACE


def batchable(duration_hint: float | None) -> bool:
    """Whether a job this long may run in a micro-batch (see ASR_BATCH_*)."""
    return (
        settings.ASR_BATCH_JOBS > 1
        and duration_hint is not None
        and 0 < duration_hint <= settings.ASR_BATCH_JOB_MAX_SECONDS
    )


def message_time_limits(duration_hint: float | None) -> tuple[float, float]:
    """The limits of a job's own message: a short job's message may lead a batch,
    so its limits cover a full one."""
    if batchable(duration_hint):
        duration_hint = max(duration_hint or 0.0, settings.ASR_BATCH_AUDIO_SECONDS)
    return transcription_time_limits(duration_hint=duration_hint)


def _send(
    name: str,
    unit_id: str,
    *,
    task_id: str,
    limits: tuple[float, float],
    what: str,
    priority: int,
) -> None:
    soft, hard = limits
    dispatch.send(
        name,
        (unit_id,),
        task_id=task_id,
        soft_time_limit=round(soft),
        time_limit=round(hard),
        priority=priority,
        what=what,
    )


def transcription_enqueue(*, transcription: Transcription, again: bool = False) -> None:
    """Send the job's message (``again``: a job given back, to the head of the
    queue); a broker outage leaves the job to the reconciler."""
    _send(
        TRANSCRIBE,
        str(transcription.id),
        task_id=transcription.task_id,
        limits=message_time_limits(transcription.duration_hint),
        what=f"job {transcription.id}",
        priority=PRIORITY_AGAIN if again else PRIORITY_NEW,
    )


def chunk_enqueue(*, chunk: TranscriptionChunk, again: bool = False) -> None:
    """Send a chunk's message (``again`` as for a job); a broker outage leaves it
    to the reconciler."""
    _send(
        TRANSCRIBE_CHUNK,
        str(chunk.id),
        task_id=chunk.task_id,
        limits=transcription_time_limits(duration_hint=chunk.duration),
        what=f"job {chunk.transcription_id}: chunk {chunk.index}",
        priority=PRIORITY_AGAIN if again else PRIORITY_NEW,
    )


def messages_revoke(task_ids: list[str], *, what: str) -> None:
    """Have the workers drop these messages unrun (see ``kikipounamu.dispatch``)."""
    dispatch.revoke(task_ids, what=what)
