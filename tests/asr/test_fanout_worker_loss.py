"""A worker SIGKILLed while a long job's chunks run: the job still finishes exactly
once, and the chunks that had finished are not computed again."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
from django.core.files.storage import default_storage

from asr import chunking
from asr.engines.synthetic import MARKER_TEXT
from asr.models import TranscriptionChunk
from asr.models import TranscriptionEvent
from tests import processes
from tests.audio_files import sine

pytestmark = pytest.mark.pipeline

NAMESPACE = {"KIKI_TEST_NAMESPACE": "-fanout-loss"}
# Chunks of 20-30 s at a synthetic RTF of 0.15: 3-4.5 s of work each. The broker
# hands a dead worker's message on after 12 s, longer than any task's hard limit
# (8 + 2 s).
FAST_REDELIVERY = {
    **NAMESPACE,
    "ASR_ENGINE": "synthetic",
    "ASR_SYNTHETIC_RTF": "0.15",
    "ASR_FANOUT_SECONDS": "30",
    "ASR_FANOUT_CHUNK_SECONDS": "20",
    "ASR_FANOUT_MAX_CHUNK_SECONDS": "30",
    "ASR_TIME_LIMIT_MAX": "8",
    "ASR_TIME_LIMIT_GRACE": "2",
    "CELERY_VISIBILITY_TIMEOUT": "12",
    "BROKER_UNACKED_RESTORE_INTERVAL": "1",
    "BROKER_UNACKED_RESTORE_THROTTLE": "1",
}
SR = 16_000


def tone_with_gaps(path: Path, seconds: int) -> Path:
    samples = sine(seconds)
    for start in range(9, seconds, 9):
        samples[start * SR : (start + 1) * SR] = 0
    chunking.write_wav(path, samples)
    return path


def pool_pids(worker: processes.Process) -> set[int]:
    return {child.pid for child in psutil.Process(worker.popen.pid).children()}


def test_killed_worker_mid_chunks_the_job_finishes_once_without_recomputing(
    own_live_api, tmp_path: Path
) -> None:
    # given two workers running the chunks of a 90 s job
    doomed = processes.start_worker(**FAST_REDELIVERY)
    survivor = processes.start_worker(**FAST_REDELIVERY)
    replacement = None
    try:
        job_id = own_live_api.submit(tone_with_gaps(tmp_path / "long.wav", 90)).json()[
            "id"
        ]
        chunks = TranscriptionChunk.objects.filter(transcription_id=job_id)
        doomed_pids = pool_pids(doomed)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = list(chunks.filter(status="succeeded"))
            # A chunk the doomed worker started after the first one finished still
            # has seconds of work left when the kill lands; one started beside it
            # may finish in the gap between this query and the kill.
            first_done = min((c.finished_at for c in done), default=None)
            victims = (
                list(
                    chunks.filter(
                        status="running",
                        worker_pid__in=doomed_pids,
                        started_at__gt=first_done,
                    )
                )
                if first_done
                else []
            )
            if done and victims:
                break
            assert own_live_api.get(job_id)["status"] in ("queued", "running")
            time.sleep(0.05)
        else:
            raise TimeoutError("never one chunk done and one running on the first")

        # when that worker (main process and pool child) is SIGKILLed mid-chunk
        doomed.kill()
        assert own_live_api.get(job_id)["status"] == "running"
        # and another worker starts
        replacement = processes.start_worker(**FAST_REDELIVERY)
        job = own_live_api.wait(job_id, timeout=90)
    finally:
        for worker in (doomed, survivor, replacement):
            if worker is not None:
                worker.stop()

    # then the job succeeded, once, with every chunk in order
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1
    kinds = list(
        TranscriptionEvent.objects.filter(transcription_id=job_id).values_list(
            "kind", flat=True
        )
    )
    assert kinds == ["accepted", "started", "succeeded"]
    final = {c.pk: c for c in chunks}
    ordered = sorted(final.values(), key=lambda c: c.index)
    assert all(c.status == "succeeded" for c in ordered)
    assert job["segments"] == [
        {
            "start": pytest.approx(c.start, abs=1e-3),
            "end": pytest.approx(c.end, abs=1e-3),
            "text": MARKER_TEXT,
        }
        for c in ordered
    ]
    # the chunks that had finished were not computed again
    for chunk in done:
        again = final[chunk.pk]
        assert again.attempts == 1
        assert again.finished_at == chunk.finished_at
        assert again.worker_pid == chunk.worker_pid
    # the one the dead worker held ran once more, elsewhere
    victim = final[victims[0].pk]
    assert victim.attempts == 2
    assert victim.worker_pid not in doomed_pids
    # no chunk ran more often than that, and their audio is gone
    assert max(c.attempts for c in ordered) <= 2
    assert not Path(default_storage.path(f"chunks/{job_id}")).exists()
