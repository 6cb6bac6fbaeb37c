"""Which message runs a job: claiming it, micro-batching short jobs under one
message, and giving a dead batch's jobs back to the queue.

Who pays for a dead process: every claim costs a job an attempt, and a job whose
workers died ASR_MAX_ATTEMPTS times is not run again (``worker_lost``). Of the jobs a
dead batch held, only those its process was working on when it died
(``in_progress``: the one being decoded, or those in the engine call) may have
killed it; they keep the attempt, and the others get theirs back. So a file that
crashes the decoder or the model fails by itself, and never takes the jobs that
happened to share its batch to the cap.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case
from django.db.models import F
from django.db.models import Q
from django.db.models import Value
from django.db.models import When
from django.utils import timezone

from asr.events import transcription_event_record
from asr.events import transcription_events_record_bulk
from asr.models import Transcription
from asr.models import TranscriptionEvent
from asr.ops import stats
from asr.services import attempts
from asr.services import dispatch
from asr.services import fanout

logger = logging.getLogger(__name__)

Status = Transcription.Status
Kind = TranscriptionEvent.Kind


def holder_task_id(*, status: str, task_id: str, batch_task_id: str) -> str | None:
    """The task id of the message that holds a job: while it waits, its own; while
    it runs, the message it runs under (its own, or a batch's)."""
    if status == Status.QUEUED:
        return task_id
    if status == Status.RUNNING:
        return batch_task_id or task_id
    return None


def _held_by(task_id: str) -> Q:
    """The jobs message ``task_id`` runs: its own, and those it took into its batch."""
    return Q(batch_task_id=task_id) | Q(task_id=task_id, batch_task_id="")


def transcription_claim(
    *, transcription_id: str, task_id: str, hostname: str
) -> Transcription | None:
    """Take the job for this worker, or ``None`` if there is nothing to do.

    A conditional UPDATE decides: a job already finished (a redelivered message) or
    one whose workers died too often is not run again. A running job may be claimed
    by the message that holds it (its own, or the batch's it runs in): that message
    is only redelivered once the worker that held it is gone (the broker's visibility
    timeout is longer than any task's hard limit). Any other message for a running
    job (its own, while a batch runs it) does nothing.

    A redelivered message whose batch died while working on another of its jobs
    claims nothing: all the batch's jobs go back to the queue, this one with its
    attempt given back (``transcription_batch_release``).
    """
    row = (
        Transcription.objects.filter(pk=transcription_id)
        .values("status", "duration_hint", "task_id", "batch_task_id", "in_progress")
        .first()
    )
    if row is None or row["status"] not in (Status.QUEUED, Status.RUNNING):
        _nothing_to_do(transcription_id, row, task_id)
        return None
    redelivered = row["status"] == Status.RUNNING
    holder = holder_task_id(
        status=row["status"], task_id=row["task_id"], batch_task_id=row["batch_task_id"]
    )
    if redelivered and holder != task_id:
        logger.debug(
            "job %s: running under task %s; this message has nothing to do",
            transcription_id,
            holder,
        )
        return None
    claimable = Transcription.objects.filter(pk=transcription_id, status=row["status"])
    if redelivered:
        # Long audio already split into chunks: never claimed or split again.
        if fanout.transcription_fan_out_resume(transcription_id=transcription_id):
            return None
        if not row["in_progress"]:
            # Its batch died on another job: this one did not cause it.
            transcription_batch_release(task_id=task_id, leader=True)
            return None
        claimable = claimable.filter(batch_task_id=row["batch_task_id"])
    job = _claim(claimable, transcription_id, task_id, hostname, row["duration_hint"])
    if job is None:
        attempts.transcription_fail_unheld(
            claimable, transcription_id=transcription_id, failure=attempts.worker_lost()
        )
        return None
    if redelivered:
        # This message ran a batch when its worker died, working on this job (now
        # run again, alone): the jobs it had taken go back to the queue.
        transcription_batch_release(task_id=task_id, keep=transcription_id)
    job.claim_redelivered = redelivered  # type: ignore[attr-defined]
    return job


def _nothing_to_do(transcription_id: str, row: Any, task_id: str) -> None:
    # DEBUG: with micro-batching, most jobs' own messages come to this.
    logger.debug(
        "job %s: nothing to do (finished, cancelled or gone)", transcription_id
    )
    # This message may have led a batch whose worker died after finishing this job
    # but not the others: those go back to the queue. (A job that ran in another
    # message's batch keeps that message's id: its own message led none.)
    if (
        row is not None
        and not row["batch_task_id"]
        and Transcription.objects.filter(
            batch_task_id=task_id, status=Status.RUNNING
        ).exists()
    ):
        transcription_batch_release(task_id=task_id)


def _claim(
    claimable: Any,
    transcription_id: str,
    task_id: str,
    hostname: str,
    duration_hint: float | None,
) -> Transcription | None:
    now = timezone.now()
    _, hard = dispatch.message_time_limits(duration_hint)
    with transaction.atomic():
        if not attempts.attempt_claim(
            claimable,
            hostname=hostname,
            now=now,
            deadline_at=now + timedelta(seconds=hard),
            task_id=task_id,
            batch_task_id="",
            # Alone, or the first of its batch: what its process works on.
            in_progress=True,
            event_seq=F("event_seq") + 1,
        ):
            return None
        job = Transcription.objects.select_related("owner").get(pk=transcription_id)
        transcription_event_record(
            transcription_id=transcription_id,
            kind=Kind.STARTED,
            data={"worker": hostname, "task_id": task_id},
            job=job,
            seq=job.event_seq,
        )
    return job


def transcription_batch_claim(
    *, leader: Transcription, task_id: str, hostname: str, wait: float = 0.0
) -> list[Transcription]:
    """Take other short queued jobs to run with ``leader`` under its message: for
    engines that batch natively (one engine call for them all); the caller asks.

    The oldest first, within ASR_BATCH_JOBS and ASR_BATCH_AUDIO_SECONDS, and never
    more than the batch's fair share of the waiting jobs (``_batch_share``); if
    fewer are waiting, look again for up to ``wait`` seconds. Each is claimed like
    a job of its own (queued -> running, attempts + 1, a STARTED event), marked as
    held by ``task_id``; its own message, when it comes, does nothing. A job that
    has been charged an attempt before (a worker died on it), or taken back from
    a dead batch (``alone``), neither leads nor joins a batch: it runs alone, so
    that if it kills a worker again it is alone.
    """
    if (
        not dispatch.batchable(leader.duration_hint)
        or leader.attempts > 1
        or leader.alone
    ):
        return []
    budget = settings.ASR_BATCH_AUDIO_SECONDS - (leader.duration_hint or 0.0)
    members: list[Transcription] = []
    give_up = time.monotonic() + wait
    while budget > 0:
        room = _batch_share(taken=len(members)) - 1 - len(members)
        if room > 0:
            taken = _batch_claim_once(
                leader=leader,
                task_id=task_id,
                hostname=hostname,
                room=room,
                budget=budget,
            )
            members += taken
            budget -= sum(job.duration_hint or 0.0 for job in taken)
        if len(members) + 1 >= settings.ASR_BATCH_JOBS or time.monotonic() >= give_up:
            break
        time.sleep(min(0.005, max(give_up - time.monotonic(), 0)))
    if members:
        logger.info(
            "job %s: batch of %d under task %s (%s)",
            leader.id,
            len(members) + 1,
            task_id,
            ", ".join(str(job.id) for job in members),
        )
        # Each member's own message would go through a worker's pool only to find
        # nothing to do (its claim sees the job running under the batch): on short
        # clips, a good part of a worker's CPU per job. One broadcast per batch;
        # safe either way, as a job that goes back to the queue gets a new task id.
        dispatch.messages_revoke(
            [job.task_id for job in members], what=f"batch {task_id}"
        )
    return members


def _batch_share(*, taken: int) -> int:
    """The most jobs a batch may hold (its leader and ``taken`` included).

    Never at the expense of an idle process: a batch takes no more than its fair
    share of the work waiting, as if every process that consumes `asr` (from the
    workers' heartbeats) were free to take the rest. 4 short jobs and 2 processes
    run 2 and 2, not 4 and 0; a deep queue still fills every batch to ASR_BATCH_JOBS.
    """
    waiting = Transcription.objects.filter(status=Status.QUEUED).count() + 1 + taken
    share = math.ceil(waiting / stats.asr_slots_recent())
    return min(settings.ASR_BATCH_JOBS, share)


def _batch_claim_once(
    *, leader: Transcription, task_id: str, hostname: str, room: int, budget: float
) -> list[Transcription]:
    longest = min(settings.ASR_BATCH_JOB_MAX_SECONDS, budget)
    with transaction.atomic():
        # SKIP LOCKED: two workers batching at once take different jobs instead of
        # waiting on each other (PostgreSQL; SQLite has one writer at a time anyway).
        waiting = list(
            Transcription.objects.select_for_update(skip_locked=True)
            .filter(
                status=Status.QUEUED,
                duration_hint__gt=0,
                duration_hint__lte=longest,
                # Never charged, never in a dead batch: such a job runs alone.
                attempts=0,
                alone=False,
            )
            .exclude(pk=leader.pk)
            .order_by("created_at")
            .values_list("pk", "duration_hint")[:room]
        )
        chosen, total = [], 0.0
        for pk, hint in waiting:
            duration = hint or 0.0
            if total + duration > budget:
                break
            chosen.append(pk)
            total += duration
        if not chosen:
            return []
        attempts.attempt_claim(
            Transcription.objects.filter(pk__in=chosen, status=Status.QUEUED),
            hostname=hostname,
            now=timezone.now(),
            deadline_at=leader.deadline_at,
            batch_task_id=task_id,
            in_progress=False,
            event_seq=F("event_seq") + 1,
        )
        members = list(
            Transcription.objects.select_related("owner")
            .filter(pk__in=chosen, status=Status.RUNNING, batch_task_id=task_id)
            .order_by("created_at")
        )
        started = {"worker": hostname, "task_id": task_id, "batch_of": str(leader.id)}
        transcription_events_record_bulk(
            [(job, Kind.STARTED, started) for job in members]
        )
    return members


def transcription_batch_in_progress(*, task_id: str, jobs: list[Transcription]) -> None:
    """Record that the process running batch message ``task_id`` now works on
    ``jobs`` (one being decoded, or those in one engine call), and on none of the
    batch's others: if it dies now, only these may have killed it."""
    working = [job.pk for job in jobs]
    Transcription.objects.filter(_held_by(task_id), status=Status.RUNNING).update(
        in_progress=Case(When(pk__in=working, then=Value(True)), default=Value(False))
    )


def transcription_batch_release(
    *, task_id: str, keep: Any = None, leader: bool = False
) -> int:
    """Put back in the queue, at its head, the running jobs held by batch message
    ``task_id`` (with ``leader``, the message's own job too; never ``keep``), each
    under a new message of its own, to run alone; how many.

    Those the batch's process was not working on when it stopped get back the
    attempt their claim cost; those it was (``in_progress``) keep it and run alone
    from now on (``transcription_batch_claim``).
    """
    released = given_back = 0
    held = Q(batch_task_id=task_id)
    if leader:
        held = _held_by(task_id)
    with transaction.atomic():
        rows = Transcription.objects.filter(held, status=Status.RUNNING)
        if keep is not None:
            rows = rows.exclude(pk=keep)
        for job in rows.select_for_update().order_by("created_at"):
            counted = job.in_progress or not job.attempts
            # A new task id: the job's old message may still be waiting in the queue,
            # and two messages with one id could both take the job. (It also fences
            # off the old attempt, whose number a job given its attempt back reuses.)
            new_task_id = str(uuid.uuid4())
            if not Transcription.objects.filter(
                held, pk=job.pk, status=Status.RUNNING, attempts=job.attempts
            ).update(
                status=Status.QUEUED,
                batch_task_id="",
                task_id=new_task_id,
                started_at=None,
                deadline_at=None,
                attempts=job.attempts if counted else job.attempts - 1,
                in_progress=True,
                alone=True,
            ):
                continue
            job.status, job.task_id, job.batch_task_id = Status.QUEUED, new_task_id, ""
            transcription_event_record(
                transcription_id=job.pk,
                kind=Kind.REQUEUED,
                data={
                    "reason": "its batch's worker stopped",
                    "batch_task_id": task_id,
                    "attempt_counted": counted,
                },
            )
            # To the head of the queue: it was taken once already, and would
            # otherwise wait behind every job queued since.
            transaction.on_commit(
                functools.partial(
                    dispatch.transcription_enqueue, transcription=job, again=True
                )
            )
            released += 1
            given_back += not counted
    if released:
        logger.warning(
            "batch %s: %d jobs put back in the queue after its worker stopped, %d "
            "with their attempt given back",
            task_id,
            released,
            given_back,
        )
    return released


def transcription_worker_lost(*, task_id: str) -> int | None:
    """The pool process running message ``task_id`` died (SIGKILL, the OOM killer,
    a crash in native code): its jobs go back to the head of the queue now, each
    under a new message, to run alone; how many, or None if this is not for here (a fanned-out
    job, whose chunks have their own messages: Celery's requeue brings its leader
    back to ``fanout.transcription_fan_out_resume``).

    In place of Celery's requeue (reject_on_worker_lost), which pushes the message
    behind every job queued since, the jobs showing ``running`` until it comes
    round. The job the process was working on keeps the attempt, so a file that
    kills its worker every time still stops at ASR_MAX_ATTEMPTS.
    """
    held = Transcription.objects.filter(_held_by(task_id), status=Status.RUNNING)
    if held.filter(chunks__isnull=False).exists():
        return None
    return transcription_batch_release(task_id=task_id, leader=True)
