"""Long audio fanned out, in-process: split, chunks, fan-in, failures, reconciler.

The engine is a fake here and chunk messages are recorded instead of sent; the real
workers, broker and engine are in test_fanout_pipeline.py and
test_fanout_worker_loss.py.
"""

from __future__ import annotations

import itertools
import random
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.utils import timezone

from asr import chunking
from asr import services
from asr.engines import EngineError
from asr.engines import EngineTransientError
from asr.models import Transcription
from asr.models import TranscriptionChunk
from asr.models import TranscriptionEvent
from asr.services import dispatch
from asr.services import fanout
from asr.signals import transcription_event
from tests.asr.test_services import FakeEngine
from tests.audio_files import sine
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

Status = Transcription.Status
ChunkStatus = TranscriptionChunk.Status
SR = 16_000


@pytest.fixture(autouse=True)
def _fanout_settings(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.ASR_FANOUT_SECONDS = 30
    settings.ASR_FANOUT_CHUNK_SECONDS = 20
    settings.ASR_FANOUT_MAX_CHUNK_SECONDS = 30
    settings.ASR_MAX_ATTEMPTS = 3


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Chunk messages, recorded (by chunk index) instead of sent to the broker."""
    indexes: list[int] = []
    monkeypatch.setattr(
        dispatch,
        "chunk_enqueue",
        lambda *, chunk, again=False: indexes.append(chunk.index),
    )
    return indexes


@pytest.fixture
def announced() -> Any:
    """Every event announced after commit: (kind, seq, data)."""
    seen: list[tuple[str, int, dict[str, Any]]] = []

    def receiver(sender: Any, event: TranscriptionEvent, **_: Any) -> None:
        seen.append((event.kind, event.seq, event.data))

    transcription_event.connect(receiver, dispatch_uid="test-fanout")
    yield seen
    transcription_event.disconnect(dispatch_uid="test-fanout")


def long_job(seconds: float = 70.0) -> Transcription:
    # A tone with 1 s gaps every 9 s: somewhere to cut for the planner either way.
    samples = sine(seconds)
    for start in range(9, int(seconds), 9):
        samples[start * SR : (start + 1) * SR] = 0
    path = Path(default_storage.path("upload.wav"))
    chunking.write_wav(path, samples)
    job = Transcription(original_filename="long.wav", task_id="leader-1")
    job.audio.save(f"{job.id}.wav", ContentFile(path.read_bytes()), save=False)
    job.save()
    return job


def lead(job: Transcription, engine: Any = None) -> Transcription:
    services.transcription_process(
        transcription_id=str(job.id),
        task_id=job.task_id,
        hostname="leader",
        engine=engine or FakeEngine(),
    )
    job.refresh_from_db()
    return job


def run_chunk(chunk: TranscriptionChunk, engine: Any, hostname: str = "w1") -> None:
    fanout.chunk_process(
        chunk_id=str(chunk.id), task_id=chunk.task_id, hostname=hostname, engine=engine
    )


def chunks_of(job: Transcription) -> list[TranscriptionChunk]:
    return list(TranscriptionChunk.objects.filter(transcription=job).order_by("index"))


def test_the_leader_splits_long_audio_and_sends_one_message_per_chunk(
    sent: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    # given a 70 s job
    job = long_job(70)
    leader_engine = FakeEngine()

    # when the leader runs it
    with django_capture_on_commit_callbacks(execute=True):
        job = lead(job, leader_engine)

    # then it does not transcribe but cuts it into chunks of at most 30 s
    assert leader_engine.calls == []
    assert job.status == Status.RUNNING
    assert job.duration == pytest.approx(70.0)
    chunks = chunks_of(job)
    assert 3 <= len(chunks) <= 4
    assert chunks[0].start == 0 and chunks[-1].end == pytest.approx(70.0)
    for previous, chunk in itertools.pairwise(chunks):
        assert chunk.start == previous.end
    assert all(10 <= c.duration <= 30 for c in chunks)
    assert {c.status for c in chunks} == {ChunkStatus.QUEUED}
    # each chunk's audio is stored, 16 kHz mono, as long as the chunk
    for chunk in chunks:
        samples, rate = chunking.read_wav(Path(default_storage.path(chunk.audio)))
        assert rate == SR
        assert len(samples) / SR == pytest.approx(chunk.duration)
    assert sent == [c.index for c in chunks]
    assert job.meta["chunks"] == {"total": len(chunks), "done": 0}
    assert job.processed_seconds == 0


def test_short_audio_is_not_split(sent: list[int]) -> None:
    job = lead(long_job(25), engine := FakeEngine())
    assert job.status == Status.SUCCEEDED
    assert len(engine.calls) == 1
    assert sent == []
    assert not TranscriptionChunk.objects.exists()


def test_chunks_finishing_in_any_order_merge_in_order_with_absolute_times(
    sent: list[int], announced: Any, django_capture_on_commit_callbacks: Any
) -> None:
    # given a fanned-out job
    with django_capture_on_commit_callbacks(execute=True):
        job = lead(long_job(70))
    chunks = chunks_of(job)
    folder = Path(default_storage.path(fanout.chunk_folder(job.id)))
    assert folder.is_dir()

    announced.clear()

    # when its chunks finish in a shuffled order
    order = chunks[:]
    random.Random(3).shuffle(order)
    engine = FakeEngine()
    with django_capture_on_commit_callbacks(execute=True):
        for i, chunk in enumerate(order):
            run_chunk(chunk, engine, hostname=f"w{i % 2}")
            job.refresh_from_db()
            if i < len(order) - 1:
                assert job.status == Status.RUNNING
                assert job.meta["chunks"]["done"] == i + 1

    # then the job succeeded once, its segments in order with times in the file
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED
    assert job.segments == [
        {
            "start": pytest.approx(c.start, abs=1e-3),
            "end": pytest.approx(c.start + 1.0, abs=1e-3),
            "text": "hello world",
        }
        for c in chunks
    ]
    assert job.text == " ".join(["hello world"] * len(chunks))
    assert job.duration == pytest.approx(70.0)
    assert job.processed_seconds == pytest.approx(70.0)
    assert job.attempts == 1
    assert job.engine_seconds is not None and job.real_time_factor is not None
    assert (job.engine, job.model, job.device) == ("fake", "fake-model", "cpu")
    assert job.meta["chunks"] == {"total": len(chunks), "done": len(chunks)}
    assert job.processing_seconds is not None
    # one progress event per chunk, then the success, with growing seq
    kinds = [(kind, data.get("chunks_done")) for kind, _, data in announced]
    assert kinds == [
        *[("progress", i + 1) for i in range(len(chunks))],
        ("succeeded", None),
    ]
    seqs = [seq for _, seq, _ in announced]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert announced[-1][1] == job.event_seq
    assert list(job.events.values_list("kind", flat=True)) == ["started", "succeeded"]
    # and the chunk audio is gone
    assert not folder.exists()


@pytest.mark.django_db(transaction=True)
def test_the_last_two_chunks_finishing_at_once_merge_the_job_exactly_once(
    sent: list[int],
) -> None:
    # Each chunk counts the done ones under a row lock on the job: without it, on
    # PostgreSQL (READ COMMITTED) two chunks committing together can both miss the
    # other and leave the job running.
    for _ in range(4):
        job = lead(long_job(70))
        chunks = chunks_of(job)
        assert len(chunks) == 3
        run_chunk(chunks[0], FakeEngine())
        barrier = threading.Barrier(2)

        class Together(FakeEngine):
            def transcribe(self, samples: Any, *args: Any, **kwargs: Any) -> Any:
                barrier.wait(10)  # both finish transcribing at the same moment
                return super().transcribe(samples, *args, **kwargs)

        def finish(chunk: TranscriptionChunk) -> None:
            try:
                run_chunk(chunk, Together(), hostname=f"w{chunk.index}")
            finally:
                connection.close()

        threads = [threading.Thread(target=finish, args=(c,)) for c in chunks[1:]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

        job.refresh_from_db()
        assert job.status == Status.SUCCEEDED
        assert job.events.filter(kind="succeeded").count() == 1
        assert job.text == " ".join(["hello world"] * 3)


def test_a_redelivered_chunk_message_never_computes_a_done_chunk_again(
    sent: list[int],
) -> None:
    job = lead(long_job(70))
    first = chunks_of(job)[0]
    engine = FakeEngine()
    run_chunk(first, engine)
    run_chunk(first, engine)  # the same message again (acks_late redelivery)
    first.refresh_from_db()
    assert len(engine.calls) == 1
    assert (first.status, first.attempts) == (ChunkStatus.SUCCEEDED, 1)


def test_a_redelivered_leader_does_not_split_again_and_resends_only_lost_chunks(
    sent: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a fanned-out job whose first chunk is done and whose second chunk's
    # message the broker holds; the leader's worker died before acknowledging
    job = lead(long_job(70))
    chunks = chunks_of(job)
    run_chunk(chunks[0], FakeEngine())
    monkeypatch.setattr(fanout, "held_task_ids", lambda: {chunks[1].task_id})
    sent.clear()

    # when the leader's message comes back
    again = lead(job, engine := FakeEngine())

    # then nothing is split or claimed again; only the chunks without a message
    # are sent again
    assert engine.calls == []
    assert again.attempts == 1
    assert [c.pk for c in chunks_of(again)] == [c.pk for c in chunks]
    assert sent == [c.index for c in chunks[2:]]
    requeued = again.events.get(kind="requeued")
    assert requeued.data == {
        "reason": "leader redelivered",
        "chunks": [c.index for c in chunks[2:]],
    }


def test_a_permanent_error_in_one_chunk_fails_the_job_with_its_code(
    sent: list[int], announced: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        job = lead(long_job(70))
    chunks = chunks_of(job)
    run_chunk(chunks[0], FakeEngine())

    # when a chunk fails permanently
    bad = FakeEngine(EngineError("unsupported_language", "English only."))
    with django_capture_on_commit_callbacks(execute=True):
        run_chunk(chunks[1], bad)

    # then the job fails with that code, once; the other chunks are not run
    job.refresh_from_db()
    assert (job.status, job.error_code) == (Status.FAILED, "unsupported_language")
    assert job.error_message == "English only."
    later = FakeEngine()
    for chunk in chunks[2:]:
        run_chunk(chunk, later)
    assert later.calls == []
    assert [kind for kind, _, _ in announced].count("failed") == 1
    assert job.events.get(kind="failed").data == {
        "code": "unsupported_language",
        "chunk": 1,
    }
    statuses = [c.status for c in chunks_of(job)]
    assert statuses[:2] == [ChunkStatus.SUCCEEDED, ChunkStatus.FAILED]
    assert not Path(default_storage.path(fanout.chunk_folder(job.id))).exists()


def test_transient_errors_retry_a_chunk_then_fail_the_job(sent: list[int]) -> None:
    job = lead(long_job(70))
    chunk = chunks_of(job)[0]
    flaky = FakeEngine(EngineTransientError("CUDA out of memory"))
    for _ in range(2):
        with pytest.raises(EngineTransientError):
            run_chunk(chunk, flaky)  # the task retries it
        job.refresh_from_db()
        assert job.status == Status.RUNNING
    run_chunk(chunk, flaky)
    job.refresh_from_db()
    chunk.refresh_from_db()
    assert chunk.attempts == 3
    assert (job.status, job.error_code) == (Status.FAILED, "engine_unavailable")
    assert "CUDA out of memory" in job.error_message


def test_a_chunk_that_kills_its_worker_every_time_fails_the_job_worker_lost(
    sent: list[int],
) -> None:
    job = lead(long_job(70))
    chunk = chunks_of(job)[1]
    TranscriptionChunk.objects.filter(pk=chunk.pk).update(
        status=ChunkStatus.RUNNING, attempts=3
    )
    run_chunk(chunk, engine := FakeEngine())
    job.refresh_from_db()
    assert engine.calls == []
    assert (job.status, job.error_code) == (Status.FAILED, "worker_lost")


def test_reconcile_resends_lost_chunks_and_leaves_the_leader_alone(
    sent: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a fanned-out job, a while ago, whose chunk messages the broker lost
    # (all but the second), and whose leader message is long acknowledged
    job = lead(long_job(70))
    chunks = chunks_of(job)
    old = timezone.now() - timedelta(minutes=5)
    Transcription.objects.filter(pk=job.pk).update(created_at=old, started_at=old)
    TranscriptionChunk.objects.filter(transcription=job).update(created_at=old)
    run_chunk(chunks[0], FakeEngine())
    leader_sent: list[str] = []
    monkeypatch.setattr(
        dispatch,
        "transcription_enqueue",
        lambda *, transcription: leader_sent.append(str(transcription.id)),
    )
    sent.clear()

    # when the reconciler runs
    held = {chunks[1].task_id}
    job_counts = services.transcription_reconcile(broker_task_ids=held)
    counts = services.fanout_reconcile(broker_task_ids=held)

    # then the leader is not sent again, and only the lost pending chunks are
    assert job_counts == {"requeued": 0, "timed_out": 0}
    assert leader_sent == []
    assert sent == [c.index for c in chunks[2:]]
    assert counts == {
        "chunks_requeued": len(chunks) - 2,
        "chunks_timed_out": 0,
        "merged": 0,
    }


def test_reconcile_fails_a_job_whose_running_chunk_is_past_its_deadline(
    sent: list[int],
) -> None:
    job = lead(long_job(70))
    chunk = chunks_of(job)[1]
    past = timezone.now() - timedelta(minutes=1)
    TranscriptionChunk.objects.filter(pk=chunk.pk).update(
        status=ChunkStatus.RUNNING, attempts=1, started_at=past, deadline_at=past
    )
    counts = services.fanout_reconcile(broker_task_ids=set())
    job.refresh_from_db()
    assert counts["chunks_timed_out"] == 1
    assert (job.status, job.error_code) == (Status.FAILED, "timeout")


def test_reconcile_merges_a_job_whose_chunks_are_all_done(sent: list[int]) -> None:
    job = lead(long_job(70))
    TranscriptionChunk.objects.filter(transcription=job).update(
        status=ChunkStatus.SUCCEEDED, text="x", engine="fake", engine_seconds=1.0
    )
    counts = services.fanout_reconcile(broker_task_ids=set())
    job.refresh_from_db()
    assert counts["merged"] == 1
    assert job.status == Status.SUCCEEDED
    assert services.fanout_reconcile(broker_task_ids=set())["merged"] == 0


def test_retrying_a_failed_fanned_out_job_splits_it_afresh(sent: list[int]) -> None:
    job = lead(long_job(70))
    run_chunk(chunks_of(job)[0], FakeEngine(EngineError("corrupt_audio", "bad")))
    job.refresh_from_db()
    assert job.status == Status.FAILED
    old = {c.pk for c in chunks_of(job)}

    services.transcription_retry(transcription=job)
    assert not TranscriptionChunk.objects.filter(transcription=job).exists()
    job = lead(job)

    assert job.status == Status.RUNNING
    assert job.attempts == 1
    assert old.isdisjoint(c.pk for c in chunks_of(job))


def test_fan_out_settings_decide_which_audio_is_split(settings: Any) -> None:
    assert fanout.fan_out_wanted(duration=31)
    assert not fanout.fan_out_wanted(duration=30)
    settings.ASR_FANOUT_SECONDS = 0
    assert not fanout.fan_out_wanted(duration=10_000)
    # a threshold below the longest chunk would make one-chunk "fan-outs"
    settings.ASR_FANOUT_SECONDS = 5
    assert not fanout.fan_out_wanted(duration=29)


def test_the_admin_shows_a_jobs_chunks(sent: list[int], client: Any) -> None:
    job = lead(long_job(70))
    run_chunk(chunks_of(job)[0], FakeEngine(), hostname="gpu-7")
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    response = client.get(f"/admin/asr/transcription/{job.id}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Transcription chunks" in page
    assert "gpu-7" in page
