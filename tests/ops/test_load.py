"""Load test: a real web server and a real worker (synthetic engine), a small queue
limit, and clients pushing past it. 503 busy with Retry-After appears, clients that
honour it get in, every accepted job finishes, nothing is lost or duplicated."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from rest_framework.authtoken.models import Token

from asr.models import Transcription
from tests import processes
from tests.asr.test_api import wav_bytes
from tests.conftest import LiveApi
from tests.factories import UserFactory

pytestmark = pytest.mark.pipeline

MAX_DEPTH = 3
CLIENTS = 4
JOBS_PER_CLIENT = 6
# A client waits what Retry-After says, but at most this long, to keep the test short.
MAX_WAIT = 2.0


@pytest.fixture(scope="module")
def stack(django_db_setup: Any, django_db_blocker: Any) -> Iterator[dict[str, Any]]:
    env = {
        # Its own queues: the session's worker, if another module started it, must
        # not drain this module's queue.
        "KIKI_TEST_NAMESPACE": "-load",
        "ASR_MAX_QUEUE_DEPTH": str(MAX_DEPTH),
        "API_THROTTLE_SUBMIT": "100000/min",
        "API_THROTTLE_USER": "100000/min",
        "OPS_WORKER_HEARTBEAT_SECONDS": "1",
        "ASR_ENGINE": "synthetic",
        "ASR_SYNTHETIC_RTF": "0.5",
        # One job per claim: a batch would take the whole queue's jobs at once and
        # revoke their messages, and the list could drain as fast as it fills.
        "ASR_BATCH_JOBS": "1",
    }
    web, base = processes.start_web(**env)
    worker = processes.start_worker(queues="asr", concurrency=1, **env)
    yield {"base": base, "worker": worker, "web": web}
    worker.stop()
    web.stop()


def test_past_the_queue_limit_clients_are_told_to_wait_and_nothing_is_lost(
    stack: dict[str, Any], transactional_db: Any, tmp_path: Path
) -> None:
    # given a worker that needs 0.5 s per 1 s clip, and a queue limit of 3
    user = UserFactory()
    api = LiveApi(stack["base"], Token.objects.create(user=user).key)
    clip = tmp_path / "one-second.wav"
    clip.write_bytes(wav_bytes(1.0))
    accepted: list[str] = []
    refusals: list[dict[str, Any]] = []
    lock = threading.Lock()
    started = time.monotonic()

    def client() -> None:
        session = requests.Session()
        session.headers.update(api.session.headers)
        for _ in range(JOBS_PER_CLIENT):
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with clip.open("rb") as fh:
                    response = session.post(
                        api.url("/api/v1/transcriptions"),
                        files={"file": ("clip.wav", fh)},
                        timeout=30,
                    )
                if response.status_code == 202:
                    with lock:
                        accepted.append(response.json()["id"])
                    break
                assert response.status_code == 503, response.text
                body = response.json()["error"]
                with lock:
                    refusals.append(
                        {
                            "retry_after": response.headers.get("Retry-After"),
                            "code": body["code"],
                            "depth": body["detail"]["queue_depth"],
                        }
                    )
                time.sleep(min(float(response.headers["Retry-After"]), MAX_WAIT))

    # when four clients each push six jobs as fast as they are let in
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    submitted_in = time.monotonic() - started

    # then some were told to come back later, with a reason and a delay
    assert refusals, "the queue never went past its limit"
    assert {r["code"] for r in refusals} == {"busy"}
    assert all(int(r["retry_after"]) >= 1 for r in refusals)
    assert all(r["depth"] >= MAX_DEPTH for r in refusals)
    # every client got every job in, each exactly once
    assert len(accepted) == CLIENTS * JOBS_PER_CLIENT
    assert len(set(accepted)) == len(accepted)

    # and every accepted job finishes; the refused ones left no row behind
    finished = [api.wait(job_id, timeout=180) for job_id in accepted]
    drained_in = time.monotonic() - started
    assert {job["status"] for job in finished} == {"succeeded"}
    rows = Transcription.objects.filter(owner=user).values_list("id", flat=True)
    assert {str(pk) for pk in rows} == set(accepted)

    # the worker logged JSON lines carrying the job and task ids (a session-wide
    # worker of this test run, if one is up, may have run some of the jobs)
    ours = {
        job["id"]
        for job in finished
        if job["worker_hostname"].startswith(stack["worker"].name)
    }
    assert ours

    def logged() -> list[dict[str, Any]]:
        lines = [
            json.loads(line)
            for line in stack["worker"].log().splitlines()
            if line.startswith("{")
        ]
        return [line for line in lines if " succeeded: " in line.get("message", "")]

    # The line comes just after the result is committed and announced.
    deadline = time.monotonic() + 30
    while {line["job_id"] for line in logged()} < ours:
        assert time.monotonic() < deadline, "succeeded lines missing from the log"
        time.sleep(0.2)
    assert all(line.get("task_id") for line in logged())

    # and the metrics saw the worker's heartbeat
    metrics = requests.get(f"{stack['base']}/metrics", timeout=30).text
    live = re.search(r'^kiki_workers\{queue="asr"\} (\S+)$', metrics, re.M)
    assert live
    assert float(live.group(1)) >= 1

    waits = sorted(int(r["retry_after"]) for r in refusals)
    print(
        f"\nload: {CLIENTS} clients x {JOBS_PER_CLIENT} jobs, limit {MAX_DEPTH}: "
        f"{len(accepted)} accepted, {len(refusals)} answers 503 busy "
        f"(Retry-After {waits[0]}-{waits[-1]} s, median {waits[len(waits) // 2]} s); "
        f"all in after {submitted_in:.1f} s, all done after {drained_in:.1f} s "
        f"({len(accepted) / drained_in:.2f} jobs/s); 0 lost, 0 duplicated"
    )
