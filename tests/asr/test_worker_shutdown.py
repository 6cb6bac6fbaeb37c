"""SIGTERM to a worker mid-job, as Kubernetes (a scale-down, a rollout) and docker stop
one: its main process alone gets the signal.

With REMAP_SIGTERM=SIGQUIT, as deploy/k8s sets it, the running job gets the
soft-shutdown timeout, then goes back to the queue and another worker finishes it,
exactly once. Without it, Celery's warm shutdown waits for the job however long it
takes, past any grace period a process manager gives.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from asr.models import TranscriptionEvent
from tests import processes
from tests.asr.test_worker_loss import tone
from tests.asr.test_worker_loss import wait_until_running

pytestmark = pytest.mark.pipeline

# Its own web and queues: the session's worker must not take these jobs.
NAMESPACE = {"KIKI_TEST_NAMESPACE": "-worker-shutdown"}
SOFT_SHUTDOWN = 2.0
SLOW = {
    **NAMESPACE,
    "ASR_ENGINE": "synthetic",
    "ASR_SYNTHETIC_RTF": "0.5",
    "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": str(SOFT_SHUTDOWN),
}


def sigterm_and_time_the_exit(worker: processes.Process, timeout: float) -> float:
    started = time.monotonic()
    os.kill(worker.popen.pid, signal.SIGTERM)
    worker.popen.wait(timeout)
    return time.monotonic() - started


def test_sigterm_as_sigquit_hands_a_long_job_back_after_the_soft_shutdown(
    own_live_api, tmp_path: Path
) -> None:
    # given a worker as deploy/k8s runs it, 2 s into a job of 15 s of work
    first = processes.start_worker(REMAP_SIGTERM="SIGQUIT", **SLOW)
    job_id = own_live_api.submit(tone(tmp_path / "long.wav", 30)).json()["id"]
    wait_until_running(own_live_api, job_id, attempts=1)
    time.sleep(2)

    # when it gets SIGTERM
    took = sigterm_and_time_the_exit(first, timeout=30)

    # then it is gone after the soft-shutdown timeout, long before the job's end,
    # and the job is not finished
    assert SOFT_SHUTDOWN <= took < SOFT_SHUTDOWN + 8, took
    assert own_live_api.get(job_id)["status"] == "running"

    # and the next worker runs it from the queue at once (not after the visibility
    # timeout) and finishes it exactly once
    second = processes.start_worker(**SLOW)
    try:
        job = own_live_api.wait(job_id, timeout=60)
    finally:
        second.stop()
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    kinds = list(
        TranscriptionEvent.objects.filter(transcription_id=job_id).values_list(
            "kind", flat=True
        )
    )
    assert kinds == ["accepted", "started", "started", "succeeded"]


def test_plain_sigterm_waits_for_the_whole_job_whatever_the_soft_shutdown(
    own_live_api, tmp_path: Path
) -> None:
    # given a worker with Celery's own SIGTERM, 1 s into a job of 10 s of work
    worker = processes.start_worker(**SLOW)
    job_id = own_live_api.submit(tone(tmp_path / "mid.wav", 20)).json()["id"]
    wait_until_running(own_live_api, job_id, attempts=1)
    time.sleep(1)

    # when it gets SIGTERM
    took = sigterm_and_time_the_exit(worker, timeout=60)

    # then it ignored the soft-shutdown timeout and finished the job first: what
    # deploy/k8s's REMAP_SIGTERM is for (were this to change in Celery, it could go)
    assert took > SOFT_SHUTDOWN + 2, took
    job = own_live_api.get(job_id)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1
