"""Benchmark of completion webhooks: a real Celery worker (the Procfile's
worker_webhooks: the webhooks queue on 16 threads), real Redis, and a real HTTP
receiver on 127.0.0.1 that verifies every signature with `standardwebhooks`
(tests/webhooks/receiver.py).

Run from the project root with the virtualenv:

    .venv/bin/python bench/webhooks.py             # about a minute
    .venv/bin/python bench/webhooks.py --jobs 300  # a shorter fault run

Figures:
  latency  job finished (its finishing transaction committed, as a worker's
           attempts_finish commits it) -> webhook received by a healthy receiver,
           one job at a time: p50, p90, max. Issue 19's target: p50 <= 200 ms.
  faults   --jobs jobs (default 1,000) finished in batches of 50 (the batch path's
           one transaction), to a receiver that answers 500 to 20 % of calls:
           deliveries per second (each delivered once: wall time from the first
           finish to the last delivery), attempts per second, and the checks: every
           job delivered, each under one webhook-id, each id answered 2xx once.
           Mid-run the worker is SIGKILLed and another started (the reconciler,
           run here every second as beat would, takes back what it held).
           The back-off is shortened (WEBHOOK_RETRY_BASE 0.5 s, factor 2, at most
           5 s) so a run takes a minute: the default schedule's first retry is 5 s.

It isolates itself as a test run does (tests/settings.py): its own run id, so a Redis
key prefix no other process uses, and a fresh SQLite file under var/bench-webhooks/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
RUN_ID = f"whbench-{uuid.uuid4().hex[:6]}"
RUN_DIR = ROOT / "var" / "bench-webhooks" / RUN_ID
WORKER_ENV = {
    "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    "WEBHOOK_TIMEOUT": "5",
    "WEBHOOK_RETRY_BASE": "0.5",
    "WEBHOOK_RETRY_FACTOR": "2",
    "WEBHOOK_RETRY_MAX": "5",
    "WEBHOOK_RECONCILE_MIN_AGE": "2",
}


def configure_environment() -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "KIKI_TEST_RUN": RUN_ID,
            "KIKI_TEST_SUBPROCESS": "1",
            "DATABASE_TEST_NAME": str(RUN_DIR / "db.sqlite3"),
            "MEDIA_ROOT": str(RUN_DIR / "media"),
            **WORKER_ENV,
        }
    )
    os.environ.pop("DATABASE_URL", None)
    sys.path.insert(0, str(ROOT))


def setup_django() -> None:
    import django

    django.setup()
    from django.core.management import call_command

    from kikipounamu import local

    local.prepare()
    call_command("migrate", verbosity=0, interactive=False)


def remove_run() -> None:
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(match=f"{settings.REDIS_KEY_PREFIX}*", count=1000):
        client.delete(key)
    shutil.rmtree(RUN_DIR, ignore_errors=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def running_jobs(owner: Any, count: int) -> list[Any]:
    from asr.models import Transcription

    jobs = [
        Transcription(
            owner=owner, original_filename="x.wav", status="running", attempts=1
        )
        for _ in range(count)
    ]
    Transcription.objects.bulk_create(jobs)
    return jobs


def finish_all(jobs: list[Any]) -> None:
    """Finish jobs as a worker does: one attempts_finish (one transaction)."""
    from asr.services import attempts

    attempts.attempts_finish(
        [
            attempts.succeeded(
                job,
                text="hello",
                segments=[],
                language="en",
                meta={},
                duration=1.0,
                engine="synthetic",
                model="m",
                device="cpu",
                engine_seconds=0.01,
            )
            for job in jobs
        ]
    )


def latency(receiver: Any, owner: Any, rounds: int) -> list[float]:
    from webhooks import services

    hook = services.endpoint_create(owner=owner, url=receiver.url("/healthy"))
    receiver.script("/healthy", 200, secret=hook.secret)
    waits = []
    for job in running_jobs(owner, rounds):
        finish_all([job])
        finished = time.time()
        deadline = time.monotonic() + 30
        while not receiver.calls("/healthy") and time.monotonic() < deadline:
            time.sleep(0.001)
        (call,) = receiver.calls("/healthy")
        assert call.payload is not None, "signature did not verify"
        waits.append(call.at - finished)
        receiver.reset()
        receiver.script("/healthy", 200, secret=hook.secret)
    hook.delete()
    return waits


def faults(receiver: Any, owner: Any, count: int, *, kill: bool) -> dict[str, Any]:
    from tests import processes
    from webhooks import services
    from webhooks.models import WebhookDelivery

    hook = services.endpoint_create(owner=owner, url=receiver.url("/faulty"))
    receiver.script("/faulty", ("flaky", 0.2), secret=hook.secret)
    jobs = running_jobs(owner, count)
    job_ids = {str(job.pk) for job in jobs}
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(1.0):
            services.webhooks_reconcile()

    threading.Thread(target=beat, daemon=True).start()
    started = time.monotonic()
    for i in range(0, count, 50):
        finish_all(jobs[i : i + 50])
    rows = WebhookDelivery.objects.filter(endpoint=hook)
    killed = not kill
    while rows.filter(state=WebhookDelivery.State.DELIVERED).count() < count:
        if time.monotonic() - started > 600:
            break
        if not killed and len(receiver.calls("/faulty")) > count // 3:
            WORKERS[0].kill()
            WORKERS[0] = start_worker(processes)
            killed = True
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    stop.set()
    calls = receiver.calls("/faulty")
    ids_of_job: dict[str, set[str]] = {}
    for call in calls:
        if call.payload is None:
            raise SystemExit("a signature did not verify")
        ids_of_job.setdefault(call.payload["data"]["id"], set()).add(call.webhook_id)
    ok = [call.webhook_id for call in calls if call.answered == 200]
    delivered = rows.filter(state=WebhookDelivery.State.DELIVERED).count()
    return {
        "elapsed": elapsed,
        "delivered": delivered,
        "attempts": len(calls),
        "lost": len(job_ids - set(ids_of_job)) + (count - delivered),
        "new_ids": sum(len(ids) - 1 for ids in ids_of_job.values()),
        "twice_2xx": len(ok) - len(set(ok)),
        "answered_500": sum(1 for call in calls if call.answered == 500),
        "killed": killed,
    }


WORKERS: list[Any] = []


def start_worker(processes: Any) -> Any:
    return processes.start_worker(
        queues="webhooks", pool="threads", concurrency=16, **WORKER_ENV
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument(
        "--no-kill",
        action="store_true",
        help="no SIGKILL of the worker mid-run (the lease wait out of the figure)",
    )
    args = parser.parse_args()
    configure_environment()
    setup_django()
    from tests import processes
    from tests.factories import UserFactory
    from tests.webhooks.receiver import Receiver

    receiver = Receiver().start()
    try:
        WORKERS.append(start_worker(processes))
        owner = UserFactory()
        waits = latency(receiver, owner, args.rounds)
        print(
            f"latency  finished -> received, {len(waits)} jobs one at a time: "
            f"p50 {statistics.median(waits) * 1000:.0f} ms, "
            f"p90 {percentile(waits, 0.9) * 1000:.0f} ms, "
            f"max {max(waits) * 1000:.0f} ms"
        )
        result = faults(receiver, owner, args.jobs, kill=not args.no_kill)
        print(
            f"faults   {args.jobs} jobs, receiver answering 500 to 20 %: "
            f"{result['delivered']} delivered in {result['elapsed']:.1f} s = "
            f"{result['delivered'] / result['elapsed']:.0f} deliveries/s "
            f"({result['attempts'] / result['elapsed']:.0f} attempts/s, "
            f"{result['answered_500']} answered 500)"
        )
        print(
            f"checks   lost {result['lost']}, sent under a new webhook-id "
            f"{result['new_ids']}, repeats under the same id (receivers drop them) {result['twice_2xx']}, "
            f"worker SIGKILLed mid-run: {'no' if args.no_kill else 'yes'}"
        )
    finally:
        for worker in WORKERS:
            worker.stop()
        receiver.stop()
        remove_run()


if __name__ == "__main__":
    main()
