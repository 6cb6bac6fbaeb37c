"""Micro-batching: a short job's message takes other short waiting jobs with it.

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
from asr.services import dispatch
from tests.asr.test_api import wav_bytes

pytestmark = pytest.mark.django_db

Status = Transcription.Status


@pytest.fixture(autouse=True)
def _batching(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.ASR_BATCH_JOBS = 4
    settings.ASR_BATCH_AUDIO_SECONDS = 10
    settings.ASR_BATCH_JOB_MAX_SECONDS = 5
    settings.ASR_BATCH_WAIT_SECONDS = 0


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Messages the services would send: (job id, task id)."""
    out: list[tuple[str, str]] = []
    monkeypatch.setattr(
        dispatch,
        "transcription_enqueue",
        lambda *, transcription: out.append(
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
        original_filename="a.wav",
        duration_hint=seconds,
        created_at=timezone.now() - timedelta(seconds=age),
        **fields,
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


def test_engines_without_batched_inference_run_each_job_in_turn() -> None:
    a, b, c = short_job(1, age=3), short_job(1, age=2), short_job(1, age=1)
    engine = LoopEngine()
    run_message(a, engine)
    assert engine.batch_calls == [] and engine.single_calls == 3
    assert all(j.status == Status.SUCCEEDED for j in fresh(a, b, c))


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

    # then the leader ran again, alone (attempt 2)
    leader_row, m1_row, m2_row = fresh(leader, m1, m2)
    assert (leader_row.status, leader_row.attempts) == (Status.SUCCEEDED, 2)
    assert (engine.batch_calls, engine.single_calls) == ([], 1)
    # and the others are back in the queue under new messages of their own
    for row in (m1_row, m2_row):
        assert row.status == Status.QUEUED
        assert row.batch_task_id == ""
        assert row.task_id != old_task_ids[row.pk]
        assert kinds(row) == ["started", "requeued"]
    assert sorted(sent) == sorted((str(r.pk), r.task_id) for r in (m1_row, m2_row))

    # and an old message of theirs, still in the queue, runs one as usual
    run_message(m1_row, engine, task_id=old_task_ids[m1.pk])
    assert fresh(m1)[0].status == Status.SUCCEEDED
    # while the new one, coming second, finds nothing to do
    run_message(m1_row, engine, task_id=m1_row.task_id)
    assert fresh(m1)[0].attempts == 2


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
