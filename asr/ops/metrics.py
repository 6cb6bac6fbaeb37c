"""Prometheus metrics, computed at scrape time from the database and Redis.

Any web process answers a scrape with the same numbers, with no multi-process
counter files to merge (prometheus_client's multiprocess mode). Job counters and
histograms are read from the job rows, so retention deleting old rows makes them
drop: Prometheus treats that as a counter reset, which `rate()` handles.
https://prometheus.github.io/client_python/collector/custom/
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count
from django.db.models import DurationField
from django.db.models import ExpressionWrapper
from django.db.models import F
from django.db.models import Q
from django.db.models import Sum
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from asr.models import Transcription
from asr.ops import redis_state
from asr.ops import stats

logger = logging.getLogger(__name__)

Status = Transcription.Status

QUEUE_WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
PROCESSING_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)


def _histogram(
    name: str,
    documentation: str,
    qs: Any,
    expression: Any,
    buckets: tuple[float, ...],
    *,
    duration: bool = False,
) -> HistogramMetricFamily:
    # One query: a conditional count per bucket, with the sum and count. A duration
    # (a difference of timestamps) compares with timedeltas on every database.
    def bound(seconds: float) -> Any:
        return timedelta(seconds=seconds) if duration else seconds

    aggregates: dict[str, Any] = {
        f"le_{i}": Count("pk", filter=Q(_v__lte=bound(b)))
        for i, b in enumerate(buckets)
    }
    row = (
        qs.annotate(_v=expression)
        .filter(_v__isnull=False)
        .aggregate(total=Count("pk"), sum=Sum("_v"), **aggregates)
    )
    total = row["sum"] or 0.0
    if isinstance(total, timedelta):
        total = total.total_seconds()
    observed = [(str(float(b)), float(row[f"le_{i}"])) for i, b in enumerate(buckets)]
    observed.append(("+Inf", float(row["total"])))
    return HistogramMetricFamily(
        name, documentation, buckets=observed, sum_value=float(total)
    )


class JobCollector(Collector):
    """kiki_* metrics: queues, workers, jobs, timings, failures."""

    def collect(self) -> Iterator[Metric]:
        yield from self._queues()
        yield from self._workers()
        yield from self._jobs()

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "kiki_queue_depth",
            "Messages waiting in a Celery queue (Redis LLEN).",
            labels=["queue"],
        )
        up = GaugeMetricFamily("kiki_redis_up", "1 if Redis answered this scrape.")
        try:
            for queue, n in redis_state.queue_depths().items():
                depth.add_metric([queue], n)
            up.add_metric([], 1)
        except Exception:
            logger.warning("metrics: Redis unreadable", exc_info=True)
            up.add_metric([], 0)
        yield depth
        yield up

    def _workers(self) -> Iterator[Metric]:
        workers = GaugeMetricFamily(
            "kiki_workers",
            "Celery workers with a live heartbeat, by queue they consume.",
            labels=["queue"],
        )
        processes = GaugeMetricFamily(
            "kiki_worker_processes",
            "Worker pool processes with a live heartbeat, by queue.",
            labels=["queue"],
        )
        by_queue: dict[str, list[int]] = {q: [0, 0] for q in redis_state.QUEUES}
        for worker in stats.live_workers():
            for queue in worker.get("queues") or []:
                counts = by_queue.setdefault(queue, [0, 0])
                counts[0] += 1
                counts[1] += int(worker.get("concurrency") or 1)
        for queue, (n, procs) in sorted(by_queue.items()):
            workers.add_metric([queue], n)
            processes.add_metric([queue], procs)
        yield workers
        yield processes

    def _jobs(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "kiki_jobs", "Jobs in the database by state.", labels=["state"]
        )
        for state, n in stats.jobs_by_state().items():
            jobs.add_metric([state], n)
        yield jobs

        failures = CounterMetricFamily(
            "kiki_job_failures",
            "Failed jobs in the database by error code.",
            labels=["code"],
        )
        for code, n in stats.failures_by_code().items():
            failures.add_metric([code], n)
        yield failures

        succeeded = Transcription.objects.filter(status=Status.SUCCEEDED)
        audio = succeeded.aggregate(s=Sum("duration"))["s"] or 0.0
        yield CounterMetricFamily(
            "kiki_audio_transcribed_seconds",
            "Seconds of audio in succeeded jobs.",
            value=float(audio),
        )

        started = Transcription.objects.filter(started_at__isnull=False)
        yield _histogram(
            "kiki_job_queue_wait_seconds",
            "From submission to a worker starting the job (latest attempt).",
            started,
            ExpressionWrapper(
                F("started_at") - F("created_at"), output_field=DurationField()
            ),
            QUEUE_WAIT_BUCKETS,
            duration=True,
        )
        finished = Transcription.objects.filter(
            status__in=[Status.SUCCEEDED, Status.FAILED]
        )
        yield _histogram(
            "kiki_job_processing_seconds",
            "Wall time of a job's last attempt on a worker.",
            finished,
            F("processing_seconds"),
            PROCESSING_BUCKETS,
        )
        yield _histogram(
            "kiki_job_real_time_factor",
            "Engine seconds per second of audio, succeeded jobs.",
            succeeded,
            F("real_time_factor"),
            RTF_BUCKETS,
        )


registry = CollectorRegistry(auto_describe=False)
registry.register(JobCollector())


def client_allowed(address: str) -> bool:
    """Whether a client at ``address`` may read /metrics without the bearer token
    (METRICS_ALLOWED_NETWORKS)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(
        ip in ipaddress.ip_network(network, strict=False)
        for network in settings.METRICS_ALLOWED_NETWORKS
    )
