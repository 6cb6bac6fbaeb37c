"""Micro-batching: on an engine that batches natively, a short job's message takes
other short waiting jobs with it; when its process dies, only the jobs it was working
on are charged the attempt.

In-process, with fake engines; tests/asr/test_batching_pipeline.py runs the same
through a real worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from asr import services
from asr.engines import EngineError
from asr.engines import Segment
from asr.engines import TranscriptionResult
from asr.models import Transcription
from asr.ops import stats
from asr.services import claim
from asr.services import dispatch
from asr.services import processing
from tests.asr.test_api import wav_bytes

pytestmark = pytest.mark.django_db

Status = Transcription.Status


@pytest.fixture(autouse=True)
def _batching(
    settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[int]:
    """Batching settings, and how many worker processes consume `asr` (one, unless
    a test changes it): the session's own workers must not count."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.ASR_BATCH_JOBS = 4
    settings.ASR_BATCH_AUDIO_SECONDS = 10
    settings.ASR_BATCH_JOB_MAX_SECONDS = 5
    settings.ASR_BATCH_WAIT_SECONDS = 0
    processes = [1]
    monkeypatch.setattr(stats, "asr_slots_recent", lambda: processes[0])
    return processes


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Messages the services would send: (job id, task id)."""
    out: list[tuple[str, str]] = []
    monkeypatch.setattr(
        dispatch,
        "transcription_enqueue",
        lambda *, transcription, again=False: out.append(
            (str(transcription.id), transcription.task_id)
        ),
    )
    return out


class BatchingEngine:
    """Runs clips together, like FunASR: one transcribe_batch call per batch."""

    name = "fake-batch"
    model_name = "fake-model"
    device = "cpu"
    batches_natively = True

    def __init__(self, bad_language: str | None = None) -> None:
        self.bad_language = bad_language
        self.batch_calls: list[int] = []
        self.single_calls = 0

    def _result(self, samples: np.ndarray, language: str | None) -> TranscriptionResult:
        if language is not None and language == self.bad_language:
            raise EngineError("unsupported_language", f"No {language} here.")
        seconds = samples.shape[0] / 16_000
        return TranscriptionResult(
            text=f"{seconds:.1f} seconds",
            language=language or "en",
            segments=[Segment(0.0, seconds, f"{seconds:.1f} seconds")],
        )

    def transcribe(
        self,
        samples: np.ndarray,
        sample_rate: int = 16_000,
        language: str | None = None,
        **_: Any,
    ) -> TranscriptionResult:
        self.single_calls += 1
        return self._result(samples, language)

    def transcribe_batch(
        self,
        clips: Sequence[np.ndarray],
        sample_rate: int = 16_000,
        languages: Sequence[str | None] | None = None,
        **_: Any,
    ) -> list[TranscriptionResult]:
        self.batch_calls.append(len(clips))
        langs = list(languages or [None] * len(clips))
        return [self._result(c, lang) for c, lang in zip(clips, langs, strict=True)]


class LoopEngine(BatchingEngine):
    """No batched inference (whisper, synthetic): the worker calls it per clip."""

    batches_natively = False


def short_job(
    seconds: float = 1.0, *, age: float = 0.0, **fields: Any
) -> Transcription:
    job = Transcription(
        duration_hint=seconds,
        created_at=timezone.now() - timedelta(seconds=age),
        **{"original_filename": "a.wav", **fields},
    )
    job.task_id = f"own-{job.id}"
    job.audio.save(f"{job.id}.wav", ContentFile(wav_bytes(seconds)), save=False)
    job.save()
    return job


def run_message(job: Transcription, engine: Any, task_id: str | None = None) -> None:
    services.transcription_process(
        transcription_id=str(job.id),
        task_id=task_id or job.task_id,
        hostname="w1",
        engine=engine,
    )


def fresh(*jobs: Transcription) -> list[Transcription]:
    return [Transcription.objects.get(pk=job.pk) for job in jobs]


def kinds(job: Transcription) -> list[str]:
    return list(job.events.order_by("seq").values_list("kind", flat=True))


def test_a_short_jobs_message_runs_the_waiting_short_jobs_in_one_engine_call() -> None:
    # given three short jobs waiting, the second one's message arrives first
    a, b, c = short_job(1, age=3), short_job(2, age=2), short_job(1, age=1)
    engine = BatchingEngine()

    run_message(b, engine)

    # then one engine call ran all three, each finished once, in its own right
    assert engine.batch_calls == [3]
    for job in fresh(a, b, c):
        assert job.status == Status.SUCCEEDED, job.error_message
        assert job.attempts == 1
        assert job.text == f"{job.duration_hint:.1f} seconds"
        assert job.meta["batch_jobs"] == 3
        # the batch's message is on record for the jobs it took
        assert job.batch_task_id == ("" if job.pk == b.pk else b.task_id)
        assert kinds(job) == ["started", "succeeded"]
    # and the engine time of the call is shared out by audio length
    b_row = fresh(b)[0]
    assert b_row.engine_seconds is not None and b_row.real_time_factor is not None


def test_members_own_messages_then_do_nothing() -> None:
    a, b = short_job(1, age=2), short_job(1, age=1)
    engine = BatchingEngine()
    run_message(a, engine)
    finished = fresh(a, b)

    run_message(b, engine)

    assert engine.batch_calls == [2]
    assert fresh(a, b) == finished
    assert [j.finished_at for j in fresh(a, b)] == [j.finished_at for j in finished]


def test_a_members_own_message_skips_it_while_the_batch_runs() -> None:
    leader, member = short_job(1, age=2), short_job(1, age=1)
    claimed = services.transcription_claim(
        transcription_id=str(leader.id), task_id=leader.task_id, hostname="w1"
    )
    assert claimed is not None
    taken = services.transcription_batch_claim(
        leader=claimed, task_id=leader.task_id, hostname="w1"
    )
    assert [j.pk for j in taken] == [member.pk]

    # when the member's own message comes to another worker meanwhile
    engine = BatchingEngine()
    run_message(member, engine)

    # then that worker leaves it to the batch
    assert engine.batch_calls == [] and engine.single_calls == 0
    row = fresh(member)[0]
    assert (row.status, row.attempts, row.batch_task_id) == (
        Status.RUNNING,
        1,
        leader.task_id,
    )


def test_batches_keep_to_their_bounds_and_take_the_oldest_first(settings: Any) -> None:
    settings.ASR_BATCH_JOBS = 3
    leader = short_job(1, age=10)
    long_one = short_job(6, age=9)  # over ASR_BATCH_JOB_MAX_SECONDS
    old1, old2 = short_job(4, age=8), short_job(4, age=7)
    newest = short_job(1, age=1)
    engine = BatchingEngine()

    run_message(leader, engine)

    # jobs, at most 3; audio, at most 10 s: the leader (1) + old1 (4) + old2 (4)
    assert engine.batch_calls == [3]
    statuses = {j.pk: j.status for j in fresh(leader, long_one, old1, old2, newest)}
    assert statuses == {
        leader.pk: Status.SUCCEEDED,
        old1.pk: Status.SUCCEEDED,
        old2.pk: Status.SUCCEEDED,
        long_one.pk: Status.QUEUED,
        newest.pk: Status.QUEUED,
    }


def test_long_jobs_neither_lead_nor_join_a_batch() -> None:
    long_one, short = short_job(6, age=2), short_job(1, age=1)
    engine = BatchingEngine()
    run_message(long_one, engine)
    assert (engine.batch_calls, engine.single_calls) == ([], 1)
    assert fresh(short)[0].status == Status.QUEUED


def test_no_batching_when_switched_off(settings: Any) -> None:
    settings.ASR_BATCH_JOBS = 1
    a, b = short_job(1, age=2), short_job(1, age=1)
    run_message(a, BatchingEngine())
    assert [j.status for j in fresh(a, b)] == [Status.SUCCEEDED, Status.QUEUED]


def test_a_bad_file_fails_alone_in_a_batch() -> None:
    good = short_job(1, age=2)
    bad = short_job(1, age=1)
    Path(bad.audio.path).write_bytes(b"\x00not audio at all" * 100)
    engine = BatchingEngine()

    run_message(good, engine)

    assert engine.batch_calls == [1]  # the good one; the bad one never decoded
    good_row, bad_row = fresh(good, bad)
    assert good_row.status == Status.SUCCEEDED
    assert (bad_row.status, bad_row.error_code) == (Status.FAILED, "unsupported_format")
    assert kinds(bad_row) == ["started", "failed"]


def test_one_jobs_engine_error_does_not_fail_the_others() -> None:
    ok1, german, ok2 = (
        short_job(1, age=3),
        short_job(1, age=2, language="de"),
        short_job(1, age=1),
    )
    engine = BatchingEngine(bad_language="de")

    run_message(ok1, engine)

    rows = fresh(ok1, german, ok2)
    assert [r.status for r in rows] == [
        Status.SUCCEEDED,
        Status.FAILED,
        Status.SUCCEEDED,
    ]
    assert rows[1].error_code == "unsupported_language"


def test_engines_without_batched_inference_take_no_other_jobs() -> None:
    # given three short jobs waiting, and an engine that runs clips one at a time
    a, b, c = short_job(1, age=3), short_job(1, age=2), short_job(1, age=1)
    engine = LoopEngine()

    run_message(a, engine)

    # then the message ran its own job only: the others wait for their own
    # messages, which any idle process (or machine) may take
    assert engine.batch_calls == [] and engine.single_calls == 1
    assert [j.status for j in fresh(a, b, c)] == [
        Status.SUCCEEDED,
        Status.QUEUED,
        Status.QUEUED,
    ]
    assert [j.attempts for j in fresh(a, b, c)] == [1, 0, 0]


def test_a_batch_takes_no_more_than_its_share_of_the_waiting_jobs(
    _batching: list[int],
) -> None:
    # given 4 short jobs waiting and 2 processes consuming the queue
    _batching[0] = 2
    jobs = [short_job(1, age=4 - i) for i in range(4)]
    engine = BatchingEngine()

    # when the first job's message comes
    run_message(jobs[0], engine)

    # then its batch takes one more job, leaving two for the other process
    assert engine.batch_calls == [2]
    assert [j.status for j in fresh(*jobs)] == [Status.SUCCEEDED] * 2 + [
        Status.QUEUED
    ] * 2

    # and with one process for 3 waiting jobs, a batch takes them all
    _batching[0] = 1
    run_message(jobs[2], engine)
    assert engine.batch_calls == [2, 2]


def test_a_job_a_worker_died_on_neither_leads_nor_joins_a_batch() -> None:
    # given a job that has cost an attempt before (its worker died running it)
    charged = short_job(1, age=3, attempts=1)
    fresh_one, other = short_job(1, age=2), short_job(1, age=1)
    engine = BatchingEngine()

    # when a fresh job's message comes, its batch leaves the charged one out
    run_message(fresh_one, engine)
    assert engine.batch_calls == [2]
    assert [j.status for j in fresh(charged, fresh_one, other)] == [
        Status.QUEUED,
        Status.SUCCEEDED,
        Status.SUCCEEDED,
    ]

    # and the charged one, when its own message comes, runs alone
    late = short_job(1, age=0)
    run_message(charged, engine)
    assert (engine.batch_calls, engine.single_calls) == ([2], 1)
    assert fresh(charged)[0].attempts == 2
    assert fresh(late)[0].status == Status.QUEUED


class ProcessDied(BaseException):
    """What a file that crashes the decoder does to the process running it,
    in-process: nothing after it runs, and nothing is written."""


@pytest.fixture
def poison(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job whose file is named poison.wav kills the process that decodes it."""
    decode = processing._decode

    def decode_or_die(job: Transcription) -> Any:
        if job.original_filename == "poison.wav":
            raise ProcessDied(str(job.id))
        return decode(job)

    monkeypatch.setattr(processing, "_decode", decode_or_die)


def drain(
    engine: Any, sent: list[tuple[str, str]], on_commit: Any, limit: int = 50
) -> int:
    """Deliver messages as a broker with a dying worker would: each sent message in
    turn; one whose process died comes back, as its broker would hand it on. How
    many times a process died."""
    deaths = 0
    for _ in range(limit):
        if not sent:
            return deaths
        job_id, task_id = sent.pop(0)
        try:
            with on_commit(execute=True):
                services.transcription_process(
                    transcription_id=job_id,
                    task_id=task_id,
                    hostname="w1",
                    engine=engine,
                )
        except ProcessDied:
            deaths += 1
            sent.append((job_id, task_id))
    raise AssertionError(f"still sending after {limit} messages: {sent}")


@pytest.mark.usefixtures("poison")
def test_jobs_batched_with_a_poison_file_succeed_and_it_fails_alone(
    sent: list[tuple[str, str]], django_capture_on_commit_callbacks: Any
) -> None:
    # given a batch of four short jobs, the second of which kills its worker
    good1 = short_job(1, age=4)
    bad = short_job(1, age=3, original_filename="poison.wav")
    good2, good3 = short_job(1, age=2), short_job(1, age=1)
    engine = BatchingEngine()

    # when every message runs, and each that died is handed on again
    # (the others' own messages, revoked by the batch, would find nothing to do)
    sent.append((str(good1.id), good1.task_id))
    deaths = drain(engine, sent, django_capture_on_commit_callbacks)

    # then the poison file killed its worker three times, and failed alone
    assert deaths == 3
    bad_row, *good_rows = fresh(bad, good1, good2, good3)
    assert (bad_row.status, bad_row.error_code, bad_row.attempts) == (
        Status.FAILED,
        "worker_lost",
        3,
    )
    # and the jobs that shared its batch succeeded, charged one attempt each: the
    # one they ran in, not the one the poison file cost
    assert [(r.status, r.attempts) for r in good_rows] == [(Status.SUCCEEDED, 1)] * 3
    for row in good_rows:
        requeued = row.events.get(kind="requeued")
        assert requeued.data["attempt_counted"] is False
    # each alone: taken back from a dead batch, none joins another
    assert engine.batch_calls == []


def test_jobs_in_the_engine_call_a_process_died_in_share_the_attempt(
    sent: list[tuple[str, str]], django_capture_on_commit_callbacks: Any
) -> None:
    # given a batch of three, whose process died in its engine call
    leader, m1, m2 = short_job(1, age=3), short_job(1, age=2), short_job(1, age=1)
    claimed = services.transcription_claim(
        transcription_id=str(leader.id), task_id=leader.task_id, hostname="w1"
    )
    assert claimed is not None
    members = services.transcription_batch_claim(
        leader=claimed, task_id=leader.task_id, hostname="w1"
    )
    claim.transcription_batch_in_progress(
        task_id=leader.task_id, jobs=[claimed, *members]
    )

    # when the batch's message comes back
    with django_capture_on_commit_callbacks(execute=True):
        run_message(leader, BatchingEngine())

    # then each of them may have killed it: each keeps the attempt, and runs alone
    leader_row, m1_row, m2_row = fresh(leader, m1, m2)
    assert (leader_row.status, leader_row.attempts) == (Status.SUCCEEDED, 2)
    assert [(r.status, r.attempts) for r in (m1_row, m2_row)] == [
        (Status.QUEUED, 1)
    ] * 2
    assert all(
        r.events.get(kind="requeued").data["attempt_counted"] for r in (m1_row, m2_row)
    )


def test_an_old_attempt_cannot_write_over_the_one_that_reuses_its_number(
    sent: list[tuple[str, str]], django_capture_on_commit_callbacks: Any
) -> None:
    # given a batch member given back its attempt when its batch died
    leader, member = short_job(1, age=2), short_job(1, age=1)
    claimed = services.transcription_claim(
        transcription_id=str(leader.id), task_id=leader.task_id, hostname="w1"
    )
    assert claimed is not None
    (old,) = services.transcription_batch_claim(
        leader=claimed, task_id=leader.task_id, hostname="w1"
    )
    with django_capture_on_commit_callbacks(execute=True):
        services.transcription_batch_release(task_id=leader.task_id)
    # and claimed again by its new message: attempt 1 again
    again = services.transcription_claim(
        transcription_id=str(member.id), task_id=fresh(member)[0].task_id, hostname="w2"
    )
    assert again is not None and again.attempts == old.attempts == 1

    # when the old attempt (had it lived on) tries to finish the job
    written = services.transcription_fail(transcription=old, code="x", message="old")

    # then nothing is written: the job is the new attempt's
    assert not written
    assert fresh(member)[0].status == Status.RUNNING
    assert services.transcription_fail(transcription=again, code="y", message="new")


def test_a_redelivered_batch_message_runs_its_own_job_alone_and_requeues_the_rest(
    sent: list[tuple[str, str]], django_capture_on_commit_callbacks: Any
) -> None:
    # given a batch whose worker died mid-way (claimed, never finished)
    leader, m1, m2 = short_job(1, age=3), short_job(1, age=2), short_job(1, age=1)
    claimed = services.transcription_claim(
        transcription_id=str(leader.id), task_id=leader.task_id, hostname="w1"
    )
    assert claimed is not None
    services.transcription_batch_claim(
        leader=claimed, task_id=leader.task_id, hostname="w1"
    )
    old_task_ids = {m.pk: m.task_id for m in (m1, m2)}

    # when the broker redelivers the batch's message
    engine = BatchingEngine()
    with django_capture_on_commit_callbacks(execute=True):
        run_message(leader, engine)

    # then the leader, which the process was working on, ran again, alone, as
    # attempt 2
    leader_row, m1_row, m2_row = fresh(leader, m1, m2)
    assert (leader_row.status, leader_row.attempts) == (Status.SUCCEEDED, 2)
    assert (engine.batch_calls, engine.single_calls) == ([], 1)
    # and the others are back in the queue under new messages of their own, with
    # the attempt their claim cost given back
    for row in (m1_row, m2_row):
        assert row.status == Status.QUEUED
        assert row.batch_task_id == ""
        assert row.task_id != old_task_ids[row.pk]
        assert row.attempts == 0
        assert kinds(row) == ["started", "requeued"]
    assert sorted(sent) == sorted((str(r.pk), r.task_id) for r in (m1_row, m2_row))

    assert all(row.alone for row in (m1_row, m2_row))

    # and an old message of theirs, still in the queue, runs one as usual, alone:
    # taken back from a dead batch, neither joins another
    run_message(m1_row, engine, task_id=old_task_ids[m1.pk])
    assert [j.status for j in fresh(m1, m2)] == [Status.SUCCEEDED, Status.QUEUED]
    assert (engine.batch_calls, engine.single_calls) == ([], 2)
    # while the new one, coming second, finds nothing to do
    run_message(m1_row, engine, task_id=m1_row.task_id)
    assert fresh(m1)[0].attempts == 1


def test_a_dead_pool_process_s_batch_is_back_in_the_queue_at_once(
    sent: list[tuple[str, str]], django_capture_on_commit_callbacks: Any
) -> None:
    # given a batch whose pool process died in the engine call
    leader, m1 = short_job(1, age=2), short_job(1, age=1)
    claimed = services.transcription_claim(
        transcription_id=str(leader.id), task_id=leader.task_id, hostname="w1"
    )
    assert claimed is not None
    services.transcription_batch_claim(
        leader=claimed, task_id=leader.task_id, hostname="w1"
    )
    claim.transcription_batch_in_progress(task_id=leader.task_id, jobs=[leader, m1])

    # when the worker's main process hears of it (asr.tasks.TranscribeRequest)
    with django_capture_on_commit_callbacks(execute=True):
        assert claim.transcription_worker_lost(task_id=leader.task_id) == 2

    # then both are queued under new messages, charged (both were in the call),
    # and will run alone
    rows = fresh(leader, m1)
    assert [(r.status, r.attempts, r.alone) for r in rows] == [
        (Status.QUEUED, 1, True)
    ] * 2
    assert sorted(sent) == sorted((str(r.pk), r.task_id) for r in rows)


def test_a_batch_that_died_decoding_a_member_gives_back_every_job_but_that_one(
    sent: list[tuple[str, str]], django_capture_on_commit_callbacks: Any
) -> None:
    # given a batch whose process died decoding its second job
    leader, m1, m2 = short_job(1, age=3), short_job(1, age=2), short_job(1, age=1)
    claimed = services.transcription_claim(
        transcription_id=str(leader.id), task_id=leader.task_id, hostname="w1"
    )
    assert claimed is not None
    services.transcription_batch_claim(
        leader=claimed, task_id=leader.task_id, hostname="w1"
    )
    claim.transcription_batch_in_progress(task_id=leader.task_id, jobs=[m1])

    # when the broker redelivers the batch's message
    engine = BatchingEngine()
    with django_capture_on_commit_callbacks(execute=True):
        run_message(leader, engine)

    # then it runs nothing: all three are back in the queue under new messages;
    # only the one being decoded keeps the attempt
    assert (engine.batch_calls, engine.single_calls) == ([], 0)
    rows = fresh(leader, m1, m2)
    assert [(r.status, r.attempts, r.batch_task_id) for r in rows] == [
        (Status.QUEUED, 0, ""),
        (Status.QUEUED, 1, ""),
        (Status.QUEUED, 0, ""),
    ]
    assert rows[0].task_id != leader.task_id
    assert sorted(sent) == sorted((str(r.pk), r.task_id) for r in rows)
    assert [r.events.get(kind="requeued").data["attempt_counted"] for r in rows] == [
        False,
        True,
        False,
    ]


def test_reconcile_requeues_a_batch_whose_message_was_lost(
    sent: list[tuple[str, str]], django_capture_on_commit_callbacks: Any
) -> None:
    old = timezone.now() - timedelta(minutes=10)
    # a batch whose message is still held by the broker, and one whose is gone
    alive_leader, alive_member = short_job(1, age=600), short_job(1, age=600)
    lost_leader, lost_member = short_job(1, age=600), short_job(1, age=600)
    for leader, member in ((alive_leader, alive_member), (lost_leader, lost_member)):
        claimed = services.transcription_claim(
            transcription_id=str(leader.id), task_id=leader.task_id, hostname="w1"
        )
        assert claimed is not None
        Transcription.objects.filter(pk=member.pk).update(
            status=Status.RUNNING,
            attempts=1,
            batch_task_id=leader.task_id,
            started_at=old,
            deadline_at=timezone.now() + timedelta(hours=1),
        )
    Transcription.objects.filter(pk__in=[alive_leader.pk, lost_leader.pk]).update(
        started_at=old
    )

    with django_capture_on_commit_callbacks(execute=True):
        counts = services.transcription_reconcile(
            broker_task_ids={alive_leader.task_id}, min_age=30
        )

    rows = dict(
        Transcription.objects.filter(
            pk__in=[alive_member.pk, lost_member.pk, lost_leader.pk]
        ).values_list("pk", "status")
    )
    assert rows[alive_member.pk] == Status.RUNNING
    assert rows[lost_member.pk] == Status.QUEUED
    # the lost batch's leader is re-sent its own message (it takes itself back)
    assert {job_id for job_id, _ in sent} == {str(lost_member.pk), str(lost_leader.pk)}
    assert counts == {"requeued": 2, "timed_out": 0}


def test_a_redelivered_batch_message_whose_own_job_finished_requeues_the_rest(
    sent: list[tuple[str, str]], django_capture_on_commit_callbacks: Any
) -> None:
    # given a batch whose worker died after finishing the leader's own job
    leader, member = short_job(1, age=2), short_job(1, age=1)
    claimed = services.transcription_claim(
        transcription_id=str(leader.id), task_id=leader.task_id, hostname="w1"
    )
    assert claimed is not None
    services.transcription_batch_claim(
        leader=claimed, task_id=leader.task_id, hostname="w1"
    )
    services.transcription_fail(transcription=claimed, code="x", message="done")

    # when the batch's message comes back
    with django_capture_on_commit_callbacks(execute=True):
        run_message(leader, BatchingEngine())

    # then the member is back in the queue under a message of its own
    row = fresh(member)[0]
    assert (row.status, row.batch_task_id) == (Status.QUEUED, "")
    assert sent == [(str(member.pk), row.task_id)]
