"""Signal receivers: how the bot hears that a job finished.

They run in whichever process finished the job (an ASR worker, the web process for a
cancel), after that transaction committed. They only enqueue; the answer itself is
written by a task on the ``bots`` queue, which reads the result from the job's row.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from asr.models import Transcription
from asr.models import TranscriptionEvent
from bots.services import dispatch

_FINISHED = frozenset(
    {
        TranscriptionEvent.Kind.SUCCEEDED,
        TranscriptionEvent.Kind.FAILED,
        TranscriptionEvent.Kind.CANCELLED,
    }
)


def transcription_event_received(
    sender: Any, event: TranscriptionEvent, job: Transcription | None = None, **_: Any
) -> None:
    if event.kind not in _FINISHED:
        return
    # The sender usually holds the job: only Telegram's jobs need an answer. When it
    # does not, the task asks (the database read stays off the finishing worker).
    if job is not None and job.source != Transcription.Source.TELEGRAM:
        return
    transcription_id = str(event.transcription_id)
    transaction.on_commit(lambda: dispatch.enqueue_answer(transcription_id))
