"""Micro-batching through a real web process, real Celery workers and real Redis."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from asr.models import Transcription
from asr.models import TranscriptionEvent
from tests import processes
from tests.asr.test_worker_loss import FAST_REDELIVERY
from tests.asr.test_worker_loss import tone

pytestmark = pytest.mark.pipeline

NAMESPACE = {"KIKI_TEST_NAMESPACE": "-batching"}
# As in test_worker_loss: a dead worker's message comes back after 5 s, longer than
# any task's hard limit (3 s + 1 s).
WORKER = {**FAST_REDELIVERY, **NAMESPACE, "ASR_BATCH_JOBS": "8"}


def broker() -> tuple[redis.Redis, str]:
    prefix = (
        f"{settings.REDIS_KEY_PREFIX.rstrip(':')}{NAMESPACE['KIKI_TEST_NAMESPACE']}:"
    )
    return redis.Redis.from_url(settings.REDIS_URL), prefix


def history(job_id: str) -> list[tuple[str, dict[str, Any]]]:
    return list(
        TranscriptionEvent.objects.filter(transcription_id=job_id)
        .order_by("seq")
        .values_list("kind", "data")
    )


def submit_all(api: Any, tmp_path: Path, count: int, seconds: float) -> list[str]:
    ids = []
    for i in range(count):
        response = api.submit(tone(tmp_path / f"t{i}.wav", seconds))
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def wait_all(api: Any, ids: list[str], timeout: float = 90) -> list[dict[str, Any]]:
    return [api.wait(job_id, timeout=timeout) for job_id in ids]


def test_waiting_short_jobs_run_in_batches_each_once_and_every_message_is_acked(
    own_live_api: Any, tmp_path: Path
) -> None:
    # given short jobs waiting while no worker runs
    ids = submit_all(own_live_api, tmp_path, count=6, seconds=1)

    # when a worker starts
    worker = processes.start_worker(**{**WORKER, "ASR_SYNTHETIC_RTF": "0.1"})
    try:
        jobs = wait_all(own_live_api, ids)
        # every message, the batched jobs' own ones included, leaves the broker
        client, prefix = broker()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            left = client.llen(f"{prefix}asr") + client.hlen(f"{prefix}unacked")
            if left == 0:
                break
            time.sleep(0.1)
    finally:
        worker.stop()

    # then each job succeeded once, in one attempt
    assert [job["status"] for job in jobs] == ["succeeded"] * 6
    assert [job["attempts"] for job in jobs] == [1] * 6
    for job_id in ids:
        assert [kind for kind, _ in history(job_id)] == [
            "accepted",
            "started",
            "succeeded",
        ]
    # and they ran together: one message took the others
    batched = [
        job_id
        for job_id in ids
        if any(
            "batch_of" in data for kind, data in history(job_id) if kind == "started"
        )
    ]
    assert len(batched) >= 4, [history(job_id) for job_id in ids]
    assert left == 0, "messages left in the broker (queued or unacknowledged)"
    # and the batched jobs' own messages were dropped unrun: the batch revoked them
    log = worker.log()
    for job in jobs:
        if job["id"] in batched:
            assert f"Discarding revoked task: asr.transcribe[{job['task_id']}]" in log


def test_a_batch_whose_worker_is_sigkilled_finishes_every_job_exactly_once(
    own_live_api: Any, tmp_path: Path
) -> None:
    # given four 1 s jobs waiting; the synthetic engine takes 0.6 s each, in turn
    ids = submit_all(own_live_api, tmp_path, count=4, seconds=1)
    first = processes.start_worker(**{**WORKER, "ASR_SYNTHETIC_RTF": "0.6"})
    # when the worker is SIGKILLed once the batch has finished its first job
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if Transcription.objects.filter(pk__in=ids, status="succeeded").exists():
            break
        time.sleep(0.02)
    first.kill()
    done_before = set(
        Transcription.objects.filter(pk__in=ids, status="succeeded").values_list(
            "pk", flat=True
        )
    )
    assert 0 < len(done_before) < 4, "the kill must fall inside the batch"

    # and a new worker starts
    second = processes.start_worker(**{**WORKER, "ASR_SYNTHETIC_RTF": "0.6"})
    try:
        jobs = wait_all(own_live_api, ids)
    finally:
        second.stop()

    # then every job succeeded exactly once
    assert [job["status"] for job in jobs] == ["succeeded"] * 4, jobs
    for job in jobs:
        kinds = [kind for kind, _ in history(job["id"])]
        assert kinds.count("succeeded") == 1, kinds
        # and those finished before the kill were not run again
        if job["id"] in {str(pk) for pk in done_before}:
            assert job["attempts"] == 1
            assert kinds == ["accepted", "started", "succeeded"]
