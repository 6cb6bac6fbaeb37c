"""Workers that die mid-job: the job still finishes, exactly once, or fails cleanly."""

from __future__ import annotations

import math
import os
import signal
import struct
import time
import wave
from pathlib import Path
from typing import Any

import psutil
import pytest

from asr.models import Transcription
from asr.models import TranscriptionEvent
from tests import processes

pytestmark = pytest.mark.pipeline

# Its own web and queues: the session's worker must not take (and finish) the jobs
# whose workers these tests kill.
NAMESPACE = {"KIKI_TEST_NAMESPACE": "-worker-loss"}

# Short enough for a test: the broker hands a dead worker's message on after 5 s,
# which must stay longer than any task's hard limit (3 s + 1 s).
FAST_REDELIVERY = {
    **NAMESPACE,
    "ASR_ENGINE": "synthetic",
    "ASR_SYNTHETIC_RTF": "0.5",
    "ASR_TIME_LIMIT_MAX": "3",
    "ASR_TIME_LIMIT_GRACE": "1",
    "CELERY_VISIBILITY_TIMEOUT": "5",
    "BROKER_UNACKED_RESTORE_INTERVAL": "1",
    "BROKER_UNACKED_RESTORE_THROTTLE": "1",
}


# Celery notices a pool process that died at the latest on its pool upkeep, every
# 5 s: a hard limit shorter than that can end the task first (a TimeLimitExceeded,
# acknowledged, not a WorkerLostError), so these limits stay above it.
KILLED_EVERY_TIME = {
    **FAST_REDELIVERY,
    "ASR_TIME_LIMIT_MAX": "8",
    "ASR_TIME_LIMIT_GRACE": "2",
    "CELERY_VISIBILITY_TIMEOUT": "12",
}


def tone(path: Path, seconds: float) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        frames = (
            struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 16_000)))
            for i in range(int(seconds * 16_000))
        )
        out.writeframes(b"".join(frames))
    return path


def wait_until_running(
    api: Any, job_id: str, attempts: int, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(job_id)
        if job["status"] == "running" and job["attempts"] == attempts:
            return
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} never ran attempt {attempts}: {job}")


def test_job_finishes_exactly_once_after_its_worker_is_sigkilled(
    own_live_api, tmp_path: Path
) -> None:
    # given a worker running a 4 s job (2 s of work)
    first = processes.start_worker(**FAST_REDELIVERY)
    job_id = own_live_api.submit(tone(tmp_path / "a.wav", 4)).json()["id"]
    wait_until_running(own_live_api, job_id, attempts=1)

    # when the whole worker (main process and pool child) is SIGKILLed mid-job
    first.kill()
    assert own_live_api.get(job_id)["status"] == "running"

    # and a new worker starts
    second = processes.start_worker(**FAST_REDELIVERY)
    try:
        job = own_live_api.wait(job_id, timeout=60)
    finally:
        second.stop()

    # then the broker redelivered the message and the job finished exactly once
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert job["text"] == "[synthetic transcript]"
    # and its history shows two attempts started and one finish
    kinds = list(
        TranscriptionEvent.objects.filter(transcription_id=job_id).values_list(
            "kind", flat=True
        )
    )
    assert kinds == ["accepted", "started", "started", "succeeded"]


def test_audio_that_kills_the_worker_every_time_ends_failed_worker_lost(
    own_live_api, tmp_path: Path
) -> None:
    # given a worker whose pool process dies on this job every time it runs it
    worker = processes.start_worker(**KILLED_EVERY_TIME)
    try:
        job_id = own_live_api.submit(tone(tmp_path / "b.wav", 4)).json()["id"]
        for attempt in (1, 2, 3):
            wait_until_running(own_live_api, job_id, attempts=attempt)
            children = psutil.Process(worker.popen.pid).children()
            assert children, "the prefork pool has a child process"
            for child in children:
                os.kill(child.pid, signal.SIGKILL)

        # then after the attempt cap it is failed, not retried forever
        job = own_live_api.wait(job_id, timeout=60)
    finally:
        worker.stop()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "worker_lost"
    assert "3 times" in job["error"]["message"]
    assert job["attempts"] == 3
    assert Transcription.objects.filter(pk=job_id, status="failed").count() == 1
