"""Services in-process, with a fake engine where the engine is not the subject."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.core.files.base import ContentFile
from django.utils import timezone

from asr import services
from asr.engines import EngineError
from asr.engines import EngineTransientError
from asr.engines import Segment
from asr.engines import TranscriptionResult
from asr.models import Transcription
from asr.services import dispatch
from tests.asr.test_api import wav_bytes

pytestmark = pytest.mark.django_db

Status = Transcription.Status


@pytest.fixture(autouse=True)
def _own_media_root(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


class FakeEngine:
    name = "fake"
    model_name = "fake-model"
    device = "cpu"

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[tuple[int, str | None]] = []

    def transcribe(
        self,
        samples: np.ndarray,
        sample_rate: int = 16_000,
        language: str | None = None,
        **_: Any,
    ) -> TranscriptionResult:
        self.calls.append((samples.shape[0], language))
        if self.error:
            raise self.error
        return TranscriptionResult(
            text="hello world",
            language=language or "en",
            segments=[Segment(0.0, 1.0, "hello world")],
        )


def queued_job(seconds: float = 1.0, **fields: Any) -> Transcription:
    job = Transcription(original_filename="a.wav", task_id="t-1", **fields)
    job.audio.save(f"{job.id}.wav", ContentFile(wav_bytes(seconds)), save=False)
    job.save()
    return job


def process(job: Transcription, engine: Any, task_id: str = "t-1") -> Transcription:
    services.transcription_process(
        transcription_id=str(job.id), task_id=task_id, hostname="w1", engine=engine
    )
    job.refresh_from_db()
    return job


def test_process_stores_result_timings_and_worker() -> None:
    job = process(queued_job(1.0, language="de"), engine := FakeEngine())
    assert engine.calls == [(16_000, "de")]
    assert job.status == Status.SUCCEEDED
    assert job.text == "hello world"
    assert job.segments == [{"start": 0.0, "end": 1.0, "text": "hello world"}]
    assert job.duration == pytest.approx(1.0)
    assert job.attempts == 1
    assert job.worker_hostname == "w1"
    assert (job.engine, job.model, job.device) == ("fake", "fake-model", "cpu")
    assert job.processing_seconds is not None and job.processing_seconds >= 0
    assert job.real_time_factor is not None
    assert job.started_at and job.finished_at and job.deadline_at
    # its history, in order, with one sequence number per event
    assert [(e.seq, e.kind) for e in job.events.all()] == [
        (1, "started"),
        (2, "succeeded"),
    ]
    assert job.event_seq == 2


def test_a_redelivered_message_for_a_finished_job_does_nothing() -> None:
    job = process(queued_job(), FakeEngine())
    engine = FakeEngine()
    again = process(job, engine)
    assert engine.calls == []
    assert again.attempts == 1
    assert again.finished_at == job.finished_at


def test_cancelled_job_is_not_run() -> None:
    job = queued_job(status=Status.CANCELLED)
    engine = FakeEngine()
    assert process(job, engine).status == Status.CANCELLED
    assert engine.calls == []


def test_attempt_cap_fails_the_job_as_worker_lost(settings: Any) -> None:
    settings.ASR_MAX_ATTEMPTS = 3
    job = queued_job(status=Status.RUNNING, attempts=3)
    engine = FakeEngine()
    job = process(job, engine)
    assert engine.calls == []
    assert job.status == Status.FAILED
    assert job.error_code == "worker_lost"


def test_an_older_attempt_cannot_overwrite_a_newer_one() -> None:
    job = queued_job()
    first = services.transcription_claim(
        transcription_id=str(job.id), task_id="t-1", hostname="a"
    )
    second = services.transcription_claim(
        transcription_id=str(job.id), task_id="t-1", hostname="b"
    )
    assert first and second and second.attempts == 2
    services.transcription_fail(transcription=first, code="x", message="stale")
    job.refresh_from_db()
    assert job.status == Status.RUNNING
    services.transcription_fail(transcription=second, code="y", message="current")
    job.refresh_from_db()
    assert (job.status, job.error_code) == (Status.FAILED, "y")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (EngineError("unsupported_language", "English only"), "unsupported_language"),
        (SoftTimeLimitExceeded(), "timeout"),
    ],
)
def test_permanent_errors_fail_at_once_with_a_code(error: Exception, code: str) -> None:
    job = process(queued_job(), FakeEngine(error))
    assert job.status == Status.FAILED
    assert job.error_code == code
    assert job.error_message
    assert job.attempts == 1


def test_missing_audio_file_fails_clearly() -> None:
    job = queued_job()
    Path(job.audio.path).unlink()
    assert process(job, FakeEngine()).error_code == "audio_missing"


def test_time_limits_follow_duration_and_are_capped(settings: Any) -> None:
    settings.ASR_TIME_LIMIT_BASE = 60
    settings.ASR_TIME_LIMIT_RTF = 0.5
    settings.ASR_TIME_LIMIT_MAX = 1000
    settings.ASR_TIME_LIMIT_GRACE = 30
    assert services.transcription_time_limits(duration_hint=100) == (110, 140)
    assert services.transcription_time_limits(duration_hint=10_000) == (1000, 1030)
    # an unknown duration gets the largest budget
    assert services.transcription_time_limits(duration_hint=None) == (1000, 1030)


def test_reconcile_resends_lost_messages_and_times_out_dead_jobs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[str] = []
    monkeypatch.setattr(
        dispatch,
        "transcription_enqueue",
        lambda *, transcription, again=False: sent.append(str(transcription.id)),
    )
    old = timezone.now() - timedelta(minutes=10)
    lost = queued_job()
    held = queued_job()
    overdue = queued_job(status=Status.RUNNING, attempts=1)
    Transcription.objects.filter(pk__in=[lost.pk, held.pk, overdue.pk]).update(
        created_at=old
    )
    Transcription.objects.filter(pk=held.pk).update(task_id="held")
    Transcription.objects.filter(pk=overdue.pk).update(
        started_at=old, deadline_at=old + timedelta(minutes=1), task_id="gone"
    )
    fresh = queued_job()  # just created: its message may still be on its way

    counts = services.transcription_reconcile(broker_task_ids={"held"})

    assert counts == {"requeued": 1, "timed_out": 1}
    assert sent == [str(lost.id)]
    overdue.refresh_from_db()
    assert (overdue.status, overdue.error_code) == (Status.FAILED, "timeout")
    fresh.refresh_from_db()
    assert fresh.status == Status.QUEUED


def test_a_transient_engine_error_retries_until_the_attempt_cap_then_fails(
    settings: Any,
) -> None:
    settings.ASR_MAX_ATTEMPTS = 2
    job = queued_job()
    engine = FakeEngine(EngineTransientError("CUDA out of memory"))
    # the first attempt raises, so that the task retries
    with pytest.raises(EngineTransientError):
        process(job, engine)
    assert Transcription.objects.get(pk=job.pk).status == Status.RUNNING
    # the last one fails the job with a code instead
    job = process(job, engine)
    assert (job.status, job.error_code, job.attempts) == (
        Status.FAILED,
        "engine_unavailable",
        2,
    )
    assert "CUDA out of memory" in job.error_message


def test_an_event_recorded_elsewhere_mid_run_keeps_the_sequence_whole() -> None:
    # given a claimed job, and an event recorded by someone else meanwhile
    job = queued_job()
    claimed = services.transcription_claim(
        transcription_id=str(job.id), task_id="t-1", hostname="w1"
    )
    assert claimed is not None
    from asr.events import transcription_event_record

    transcription_event_record(transcription_id=job.id, kind="requeued")

    # when the attempt finishes with the sequence number it last saw
    services.transcription_fail(transcription=claimed, code="x", message="done")

    # then the history still counts 1, 2, 3 and the job holds the last
    job.refresh_from_db()
    assert [(e.seq, e.kind) for e in job.events.all()] == [
        (1, "started"),
        (2, "requeued"),
        (3, "failed"),
    ]
    assert job.event_seq == claimed.event_seq == 3


def test_progress_stores_the_partial_transcript_under_the_next_sequence_number(
    django_capture_on_commit_callbacks: Any,
) -> None:
    job = queued_job()
    claimed = services.transcription_claim(
        transcription_id=str(job.id), task_id="t-1", hostname="w1"
    )
    assert claimed is not None and claimed.event_seq == 1
    segments = [{"start": 0.0, "end": 1.0, "text": "hello"}]

    with django_capture_on_commit_callbacks() as announced:
        services.transcription_progress(
            transcription=claimed, processed_seconds=1.0, segments=segments
        )

    job.refresh_from_db()
    assert (job.text, job.processed_seconds, job.event_seq) == ("hello", 1.0, 2)
    assert claimed.event_seq == 2 and len(announced) == 1
    # a newer attempt took the job over: the old one's progress writes nothing
    services.transcription_claim(
        transcription_id=str(job.id), task_id="t-1", hostname="w2"
    )
    services.transcription_progress(
        transcription=claimed, processed_seconds=2.0, segments=segments * 2
    )
    job.refresh_from_db()
    assert (job.processed_seconds, job.attempts) == (1.0, 2)
