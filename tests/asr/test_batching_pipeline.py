"""Micro-batching through a real web process, real Celery workers and real Redis.

The synthetic engine runs clips one at a time, so it takes no batches; with
ASR_SYNTHETIC_BATCHES it stands in for an engine that batches natively.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from asr.models import Transcription
from asr.models import TranscriptionEvent
from tests import processes
from tests.asr import poison
from tests.asr.test_worker_loss import FAST_REDELIVERY
from tests.asr.test_worker_loss import tone

pytestmark = pytest.mark.pipeline

NAMESPACE = {"KIKI_TEST_NAMESPACE": "-batching"}
# As in test_worker_loss: a dead worker's message comes back after 5 s, longer than
# any task's hard limit (3 s + 1 s).
WORKER = {**FAST_REDELIVERY, **NAMESPACE, "ASR_BATCH_JOBS": "8"}
BATCHING = {**WORKER, "ASR_SYNTHETIC_BATCHES": "true"}


def broker() -> tuple[redis.Redis, str]:
    prefix = (
        f"{settings.REDIS_KEY_PREFIX.rstrip(':')}{NAMESPACE['KIKI_TEST_NAMESPACE']}:"
    )
    return redis.Redis.from_url(settings.REDIS_URL), prefix


def start_batching_worker(**env: str) -> processes.Process:
    """A worker of one process on an engine that batches, alone in the namespace:
    the heartbeats of workers that earlier tests killed (alive until they expire)
    would count as processes that a batch must leave work for."""
    client, prefix = broker()
    for key in client.scan_iter(match=f"{prefix}kiki:ops:worker:*"):
        client.delete(key)
    return processes.start_worker(**{**BATCHING, **env})


def history(job_id: str) -> list[tuple[str, dict[str, Any]]]:
    return list(
        TranscriptionEvent.objects.filter(transcription_id=job_id)
        .order_by("seq")
        .values_list("kind", "data")
    )


def submit_all(
    api: Any,
    tmp_path: Path,
    count: int,
    seconds: float,
    *,
    names: Sequence[str] = (),
) -> list[str]:
    """Submit ``count`` tones one after another (``names``: their file names)."""
    ids = []
    for i in range(count):
        name = names[i] if names else f"t{i}.wav"
        response = api.submit(tone(tmp_path / name, seconds))
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def batched(job_id: str) -> bool:
    """Whether the job was started as a member of another message's batch."""
    return any(
        "batch_of" in data for kind, data in history(job_id) if kind == "started"
    )


def test_short_jobs_on_an_engine_that_does_not_batch_spread_over_idle_processes(
    own_live_api: Any, tmp_path: Path
) -> None:
    # given a worker with two idle processes, on an engine that runs one clip at a
    # time (1 s of work for a 1 s clip)
    worker = processes.start_worker(
        concurrency=2, **{**WORKER, "ASR_SYNTHETIC_RTF": "1"}
    )
    try:
        # when four short jobs come in together
        paths = [tone(tmp_path / f"t{i}.wav", 1) for i in range(4)]
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(own_live_api.submit, paths))
        assert [r.status_code for r in responses] == [202] * 4
        jobs = wait_all(own_live_api, [r.json()["id"] for r in responses])
    finally:
        worker.stop()

    # then each process ran two, each in a message of its own
    assert [job["status"] for job in jobs] == ["succeeded"] * 4, jobs
    per_process = collections.Counter(job["meta"]["worker_pid"] for job in jobs)
    assert sorted(per_process.values()) == [2, 2], per_process
    assert not any(batched(job["id"]) for job in jobs)
    assert [job["attempts"] for job in jobs] == [1] * 4


def wait_all(api: Any, ids: list[str], timeout: float = 90) -> list[dict[str, Any]]:
    return [api.wait(job_id, timeout=timeout) for job_id in ids]


def test_waiting_short_jobs_run_in_batches_each_once_and_every_message_is_acked(
    own_live_api: Any, tmp_path: Path
) -> None:
    # given short jobs waiting while no worker runs
    ids = submit_all(own_live_api, tmp_path, count=6, seconds=1)

    # when a worker starts, on an engine that batches
    worker = start_batching_worker(ASR_SYNTHETIC_RTF="0.1")
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
    members = [job_id for job_id in ids if batched(job_id)]
    assert len(members) >= 4, [history(job_id) for job_id in ids]
    assert left == 0, "messages left in the broker (queued or unacknowledged)"
    # and the batched jobs' own messages were dropped unrun: the batch revoked them
    log = worker.log()
    for job in jobs:
        if job["id"] in members:
            assert f"Discarding revoked task: asr.transcribe[{job['task_id']}]" in log


def test_a_batch_whose_worker_is_sigkilled_finishes_every_job_exactly_once(
    own_live_api: Any, tmp_path: Path
) -> None:
    # given four 1 s jobs waiting; the engine runs them in one call of 0.6 s
    ids = submit_all(own_live_api, tmp_path, count=4, seconds=1)
    first = start_batching_worker(ASR_SYNTHETIC_RTF="0.6")
    # when the whole worker is SIGKILLed in the batch's engine call
    in_call = Transcription.objects.filter(
        pk__in=ids, status="running", in_progress=True
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and in_call.count() < 4:
        time.sleep(0.01)
    first.kill()
    assert in_call.count() == 4, "the kill must fall in the engine call"

    # and a new worker starts
    second = start_batching_worker(ASR_SYNTHETIC_RTF="0.6")
    try:
        jobs = wait_all(own_live_api, ids)
    finally:
        second.stop()

    # then every job succeeded exactly once, each charged the attempt the engine
    # call cost (any of them may have killed it), each run again alone
    assert [job["status"] for job in jobs] == ["succeeded"] * 4, jobs
    assert [job["attempts"] for job in jobs] == [2] * 4
    for job in jobs:
        kinds = [kind for kind, _ in history(job["id"])]
        assert kinds.count("succeeded") == 1, kinds
        assert kinds[-2:] == ["started", "succeeded"]
    requeued = [
        data for job_id in ids for kind, data in history(job_id) if kind == "requeued"
    ]
    assert len(requeued) == 3 and all(d["attempt_counted"] for d in requeued)


def test_jobs_batched_with_a_file_that_kills_the_worker_still_succeed(
    own_live_api: Any, tmp_path: Path
) -> None:
    # given four short jobs waiting, the second a file that kills the process that
    # decodes it
    names = ["good1.wav", poison.POISON_NAME, "good2.wav", "good3.wav"]
    good1, bad, good2, good3 = submit_all(
        own_live_api, tmp_path, count=4, seconds=1, names=names
    )

    # when a worker of one process, on an engine that batches, takes them all in
    # one batch
    worker = start_batching_worker(
        ASR_SYNTHETIC_RTF="0.1",
        DJANGO_SETTINGS_MODULE=poison.SETTINGS,
        # The worker notices a dead pool process at its pool upkeep, every 5 s:
        # a hard time limit shorter than that could end the task first (acked as
        # failed, not given back).
        ASR_TIME_LIMIT_MAX="8",
        CELERY_VISIBILITY_TIMEOUT="10",
    )
    try:
        jobs = wait_all(own_live_api, [good1, good2, good3, bad])
    finally:
        worker.stop()

    # then the file killed it three times (its batch, then twice alone) and failed
    # worker_lost by itself
    *good, failed = jobs
    assert (failed["status"], failed["error"]["code"], failed["attempts"]) == (
        "failed",
        "worker_lost",
        3,
    ), failed
    # and the others succeeded, charged one attempt each: the poison file's batch
    # gave theirs back
    assert [(job["status"], job["attempts"]) for job in good] == [("succeeded", 1)] * 3
    for job in good:
        counted = [
            data["attempt_counted"]
            for kind, data in history(job["id"])
            if kind == "requeued"
        ]
        assert counted == [False], history(job["id"])
