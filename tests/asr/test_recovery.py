"""How fast work comes back after a fault, with the production visibility timeout:
a dead worker's jobs within seconds of its heartbeat stopping, a killed pool
process's job at the head of the queue, running jobs through a Redis kill -9."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from asr.models import TranscriptionEvent
from kikipounamu.redis_server import ensure_embedded_redis
from kikipounamu.redis_server import stop_embedded_redis
from tests import processes
from tests.asr.test_worker_loss import tone
from tests.asr.test_worker_loss import wait_until_running

pytestmark = pytest.mark.pipeline

NAMESPACE = {"KIKI_TEST_NAMESPACE": "-recovery"}

# The visibility timeout is left at its production default (hours): nothing here
# may wait for it. Heartbeats are quick so the test is.
QUICK_HEARTBEATS = {
    **NAMESPACE,
    "ASR_ENGINE": "synthetic",
    "ASR_SYNTHETIC_RTF": "0.5",
    "OPS_WORKER_HEARTBEAT_SECONDS": "1",
    "OPS_WORKER_GONE_SECONDS": "3",
    "ASR_RECLAIM_INTERVAL": "1",
    # Only the reclaimer may bring anything back here.
    "ASR_RECONCILE_INTERVAL": "100000",
}


def kinds(job_id: str) -> list[str]:
    return list(
        TranscriptionEvent.objects.filter(transcription_id=job_id)
        .order_by("created_at", "id")
        .values_list("kind", flat=True)
    )


def rescued_by_reconciler() -> int:
    return TranscriptionEvent.objects.filter(
        kind="requeued", data__reason="message lost"
    ).count()


def test_a_dead_workers_job_is_back_within_seconds_not_the_visibility_timeout(
    own_live_api: Any, tmp_path: Path
) -> None:
    # given a worker running a 4 s job (2 s of work), beat running the reclaimer
    beat = processes.start_beat(tmp_path, **QUICK_HEARTBEATS)
    first = processes.start_worker(**QUICK_HEARTBEATS)
    second = None
    try:
        job_id = own_live_api.submit(tone(tmp_path / "a.wav", 4)).json()["id"]
        wait_until_running(own_live_api, job_id, attempts=1)

        # when the whole worker is SIGKILLed (a power cut) and another one is up
        first.kill()
        killed = time.monotonic()
        second = processes.start_worker(**QUICK_HEARTBEATS)
        job = own_live_api.wait(job_id, timeout=60)
        recovered = time.monotonic() - killed
    finally:
        for proc in (second, beat):
            if proc is not None:
                proc.stop()

    # then the job ran again once its heartbeat was 3 s gone, not hours later
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert kinds(job_id) == ["accepted", "started", "started", "succeeded"]
    assert recovered < 30, recovered
    assert "reclaimed 1 messages of workers gone" in beat.log() + second.log()


def test_a_killed_pool_process_s_job_runs_next_not_behind_the_queue(
    own_live_api: Any, tmp_path: Path
) -> None:
    # given one pool process on a 4 s job, with two more queued behind it
    worker = processes.start_worker(**QUICK_HEARTBEATS)
    try:
        first = own_live_api.submit(tone(tmp_path / "a.wav", 4)).json()["id"]
        wait_until_running(own_live_api, first, attempts=1)
        behind = [
            own_live_api.submit(tone(tmp_path / f"{n}.wav", 2)).json()["id"]
            for n in ("b", "c")
        ]

        # when its pool process is SIGKILLed
        for child in psutil.Process(worker.popen.pid).children():
            os.kill(child.pid, signal.SIGKILL)
        # then the job is queued again at once (not shown running by nobody)
        deadline = time.monotonic() + 10
        while own_live_api.get(first)["status"] == "running":
            assert time.monotonic() < deadline, "still shown running"
            time.sleep(0.05)
        jobs = [own_live_api.wait(job_id, timeout=60) for job_id in [first, *behind]]
    finally:
        worker.stop()

    assert [job["status"] for job in jobs] == ["succeeded"] * 3
    # and it ran before the jobs queued behind it, and kept its attempt
    assert jobs[0]["attempts"] == 2
    assert jobs[0]["started_at"] < min(job["started_at"] for job in jobs[1:])
    assert kinds(first) == ["accepted", "started", "requeued", "started", "succeeded"]


@dataclasses.dataclass
class OwnRedisStack:
    api: Any
    data: Path
    web: processes.Process
    worker: processes.Process

    def kill_redis(self) -> None:
        os.kill(int((self.data / "redis.pid").read_text()), signal.SIGKILL)


@contextlib.contextmanager
def own_redis_stack(own_live_api: Any, tmp_path: Path) -> Iterator[OwnRedisStack]:
    """A web and a worker on their own Redis (append-only, as in production), and
    no beat: no reconciler and no reclaimer can run."""
    data = tmp_path / "redis"
    redis_url = ensure_embedded_redis(data).url()
    env = {**QUICK_HEARTBEATS, "REDIS_URL": redis_url}
    web, base = processes.start_web(**env)
    worker = processes.start_worker(**env)
    api = copy.copy(own_live_api)  # the same user's token, at this web
    api.base = base
    try:
        yield OwnRedisStack(api, data, web, worker)
    finally:
        worker.stop()
        web.stop()
        stop_embedded_redis(data)


def test_running_jobs_survive_a_redis_kill_9_without_the_reconciler(
    own_live_api: Any, tmp_path: Path
) -> None:
    with own_redis_stack(own_live_api, tmp_path) as stack:
        api = stack.api
        job_ids = [
            api.submit(tone(tmp_path / f"{n}.wav", 4)).json()["id"] for n in range(3)
        ]
        wait_until_running(api, job_ids[0], attempts=1)

        # when Redis is killed with SIGKILL mid-job, and comes back 3 s later
        stack.kill_redis()
        time.sleep(3)
        ensure_embedded_redis(stack.data)

        jobs = [api.wait(job_id, timeout=90) for job_id in job_ids]

    # then every job finished, each run to the end once
    assert [job["status"] for job in jobs] == ["succeeded"] * 3, jobs
    for job_id in job_ids:
        assert kinds(job_id).count("succeeded") == 1
    assert kinds(job_ids[0]) == ["accepted", "started", "succeeded"], (
        stack.worker.log_tail()
    )
    assert rescued_by_reconciler() == 0


def test_uploads_accepted_while_redis_is_down_run_when_it_is_back_without_the_reconciler(
    own_live_api: Any, tmp_path: Path
) -> None:
    clips = [tone(tmp_path / f"{n}.wav", 1) for n in range(3)]
    with own_redis_stack(own_live_api, tmp_path) as stack:
        # when Redis is killed, uploads are accepted while it is down (their rows
        # are committed; their messages cannot be sent), and it comes back
        stack.kill_redis()
        answers = [stack.api.submit(clip) for clip in clips]
        assert [r.status_code for r in answers] == [202] * 3, answers[0].text
        job_ids = [r.json()["id"] for r in answers]
        time.sleep(1)
        ensure_embedded_redis(stack.data)

        # then the web sends them itself as soon as Redis answers: each job runs,
        # once, well inside the reconciler's first pass (which never runs here)
        jobs = [stack.api.wait(job_id, timeout=30) for job_id in job_ids]

    assert [job["status"] for job in jobs] == ["succeeded"] * 3, stack.web.log_tail()
    for job_id in job_ids:
        assert kinds(job_id) == ["accepted", "started", "succeeded"], kinds(job_id)
    assert rescued_by_reconciler() == 0
    log = stack.web.log()
    assert log.count("sent, the broker answers again") == 3, stack.web.log_tail()
