"""Business logic of transcription jobs: every door and every task calls these.

One concern a module:

- ``intake``: taking audio in (validation, storage, the job row, backpressure);
- ``dispatch``: a job's and a chunk's messages and their time limits;
- ``attempts``: the one state machine of an attempt (claim, finish, fail, the attempt
  cap, error codes and their messages), for whole jobs, batch members and chunks;
- ``claim``: which message runs a job (micro-batching, a dead batch's release);
- ``processing``: the worker side of a job's message (decode, transcribe, store);
- ``fanout``: long audio cut into chunks that run in parallel, and merged;
- ``lifecycle``: retry, cancel, delete;
- ``reconcile``: the periodic reconciler's rules.

The names doors and tasks call are here too (``from asr import services``).
Enqueueing is not: tests and callers reach it in ``asr.services.dispatch``.
"""

from asr.services.attempts import transcription_fail
from asr.services.claim import holder_task_id
from asr.services.claim import transcription_batch_claim
from asr.services.claim import transcription_batch_release
from asr.services.claim import transcription_claim
from asr.services.dispatch import batchable
from asr.services.dispatch import transcription_time_limits
from asr.services.intake import admission_check
from asr.services.intake import clean_filename
from asr.services.intake import storage_error
from asr.services.intake import transcription_create
from asr.services.lifecycle import transcription_cancel
from asr.services.lifecycle import transcription_delete
from asr.services.lifecycle import transcription_delete_audio
from asr.services.lifecycle import transcription_delete_or_cancel
from asr.services.lifecycle import transcription_retry
from asr.services.lifecycle import transcriptions_delete
from asr.services.processing import ProgressReporter
from asr.services.processing import transcription_process
from asr.services.processing import transcription_progress
from asr.services.reconcile import fanout_reconcile
from asr.services.reconcile import transcription_reconcile

__all__ = [
    "ProgressReporter",
    "admission_check",
    "batchable",
    "clean_filename",
    "fanout_reconcile",
    "holder_task_id",
    "storage_error",
    "transcription_batch_claim",
    "transcription_batch_release",
    "transcription_cancel",
    "transcription_claim",
    "transcription_create",
    "transcription_delete",
    "transcription_delete_audio",
    "transcription_delete_or_cancel",
    "transcription_fail",
    "transcription_process",
    "transcription_progress",
    "transcription_reconcile",
    "transcription_retry",
    "transcription_time_limits",
    "transcriptions_delete",
]
