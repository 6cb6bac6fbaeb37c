"""Reads for operators: queue, workers, throughput, RTF, failures, ETAs.

Everything is computed from the database and Redis when asked, so that any web
process can answer and no per-process counters have to be merged.
"""

from __future__ import annotations

import logging
import statistics
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from asr.models import Transcription
from asr.ops import redis_state

logger = logging.getLogger(__name__)

Status = Transcription.Status

# Service-rate estimates are reused this long within a process: a job list would
# otherwise ask the database once per job.
_MEMO_SECONDS = 5.0
_memo: dict[str, tuple[float, Any]] = {}


def clear_memo() -> None:
    _memo.clear()


def _memoised(key: str, compute: Any) -> Any:
    now = time.monotonic()
    hit = _memo.get(key)
    if hit is not None and now - hit[0] < _MEMO_SECONDS:
        return hit[1]
    value = compute()
    _memo[key] = (now, value)
    return value


def asr_queue_depth() -> int:
    """Messages waiting in the broker's `asr` queue; the queued jobs in the database
    if Redis cannot be read (admission must not fail because a read did)."""
    try:
        return redis_state.queue_depths(("asr",))["asr"]
    except Exception:
        logger.warning("asr queue depth unreadable; counting queued jobs instead")
        return Transcription.objects.filter(status=Status.QUEUED).count()


def live_workers() -> list[dict[str, Any]]:
    try:
        return redis_state.live_workers()
    except Exception:
        logger.warning("worker heartbeats unreadable", exc_info=True)
        return []


def asr_slots() -> int:
    """Worker processes consuming `asr` right now (at least 1 for estimates)."""
    slots = sum(
        int(w.get("concurrency") or 1)
        for w in live_workers()
        if "asr" in (w.get("queues") or [])
    )
    return max(slots, 1)


def asr_slots_recent() -> int:
    """``asr_slots``, reused for a few seconds: a worker asks before every batch."""
    return int(_memoised("asr_slots", asr_slots))


def mean_processing_seconds(sample: int = 50) -> float | None:
    """Mean wall time of the latest finished jobs within the throughput window."""
    since = timezone.now() - timedelta(seconds=settings.OPS_THROUGHPUT_WINDOW_SECONDS)
    values: list[float] = list(
        Transcription.objects.filter(
            finished_at__gte=since,
            processing_seconds__isnull=False,
            status__in=[Status.SUCCEEDED, Status.FAILED],
        )
        .order_by("-finished_at")
        .values_list("processing_seconds", flat=True)[:sample]  # type: ignore[arg-type]
    )
    return statistics.fmean(values) if values else None


def seconds_per_job() -> float | None:
    """How often a slot frees up across the fleet: mean job time / worker processes.

    A service rate rather than the completions counted in the window, which would
    read low after a quiet spell however many workers stand idle.
    """

    def compute() -> float | None:
        mean = mean_processing_seconds()
        return None if mean is None else mean / asr_slots()

    return _memoised("seconds_per_job", compute)


def eta_seconds(*, position: int | None) -> int | None:
    """Seconds until a job at ``position`` in the queue (1 = next) should be done;
    ``None`` when there is nothing recent to estimate from."""
    if position is None:
        return None
    per_job = seconds_per_job()
    if per_job is None:
        return None
    # It waits for the `position - 1` jobs ahead, then runs for one job's time.
    return round(position * per_job)


def busy_retry_after(*, depth: int) -> int:
    """Retry-After for a refused submission: until the queue is back under the limit."""
    per_job = seconds_per_job()
    if per_job is None:
        return settings.ASR_BUSY_RETRY_AFTER
    excess = max(depth - settings.ASR_MAX_QUEUE_DEPTH + 1, 1)
    return int(min(max(round(excess * per_job), 1), settings.ASR_BUSY_RETRY_AFTER_MAX))


def jobs_by_state() -> dict[str, int]:
    counts = dict(
        Transcription.objects.order_by()
        .values_list("status")
        .annotate(n=Count("pk"))
        .values_list("status", "n")
    )
    return {state: int(counts.get(state, 0)) for state in Status.values}


def failures_by_code(*, since: Any = None) -> dict[str, int]:
    qs = Transcription.objects.filter(status=Status.FAILED)
    if since is not None:
        qs = qs.filter(finished_at__gte=since)
    rows = (
        qs.order_by()
        .values_list("error_code")
        .annotate(n=Count("pk"))
        .values_list("error_code", "n")
    )
    return {code or "unknown": int(n) for code, n in rows}


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    # Nearest rank: an RTF that some job really had.
    index = max(0, min(len(values) - 1, round(q * len(values) + 0.5) - 1))
    return round(values[index], 4)


def _running_by_worker() -> dict[str, list[dict[str, Any]]]:
    running: dict[str, list[dict[str, Any]]] = {}
    for job in Transcription.objects.filter(status=Status.RUNNING).values(
        "id", "worker_hostname", "original_filename", "started_at", "duration_hint"
    ):
        running.setdefault(job["worker_hostname"] or "?", []).append(
            {
                "id": str(job["id"]),
                "filename": job["original_filename"],
                "started_at": job["started_at"].isoformat()
                if job["started_at"]
                else None,
                "duration": job["duration_hint"],
            }
        )
    return running


def ops_snapshot(*, history_minutes: int = 60) -> dict[str, Any]:
    """Everything the ops dashboard shows, as one JSON-ready dict."""
    now = timezone.now()
    window = settings.OPS_THROUGHPUT_WINDOW_SECONDS
    try:
        queues: dict[str, int | None] = dict(redis_state.queue_depths())
    except Exception:
        logger.warning("queue depths unreadable", exc_info=True)
        queues = dict.fromkeys(redis_state.QUEUES)
    recent = _History(now=now, minutes=history_minutes, window=window)
    depth = queues.get("asr")
    return {
        "time": now.isoformat(),
        "queues": queues,
        "max_queue_depth": settings.ASR_MAX_QUEUE_DEPTH,
        "accepting": depth is None or depth < settings.ASR_MAX_QUEUE_DEPTH,
        "jobs": jobs_by_state(),
        "workers": _workers(),
        "throughput": {
            "window_seconds": window,
            "jobs_per_minute": round(recent.window_jobs * 60 / window, 2),
            "audio_minutes_per_minute": round(recent.window_audio / window, 3),
        },
        "rtf": {
            "p50": _percentile(recent.rtfs, 0.5),
            "p95": _percentile(recent.rtfs, 0.95),
        },
        "failures_last_24h": failures_by_code(since=now - timedelta(hours=24)),
        "history": recent.per_minute(),
    }


def _workers() -> list[dict[str, Any]]:
    """Live workers with the jobs each runs, then the hosts that hold running jobs
    but send no heartbeat (marked stale: worth an operator's look)."""
    running = _running_by_worker()
    workers = [
        {
            "hostname": w.get("hostname"),
            "queues": w.get("queues") or [],
            "concurrency": w.get("concurrency"),
            "last_seen_seconds": round(time.time() - float(w.get("ts") or 0), 1),
            "running": running.pop(w.get("hostname") or "", []),
        }
        for w in live_workers()
    ]
    for hostname, jobs in running.items():
        workers.append(
            {
                "hostname": hostname,
                "queues": [],
                "concurrency": None,
                "last_seen_seconds": None,
                "running": jobs,
                "stale": True,
            }
        )
    return workers


class _History:
    """Jobs finished in the last ``minutes``, counted per minute, and those of the
    throughput ``window`` (seconds) apart."""

    def __init__(self, *, now: Any, minutes: int, window: float) -> None:
        self.since = now - timedelta(minutes=minutes)
        self.jobs = [0] * minutes
        self.failed = [0] * minutes
        self.audio = [0.0] * minutes
        self.rtfs: list[float] = []
        self.window_jobs = 0
        self.window_audio = 0.0
        window_start = now - timedelta(seconds=window)
        finished = Transcription.objects.filter(
            finished_at__gte=self.since,
            status__in=[Status.SUCCEEDED, Status.FAILED],
        ).values_list("finished_at", "status", "duration", "real_time_factor")
        for finished_at, status, duration, rtf in finished:
            assert finished_at is not None  # filtered on it
            minute = int((finished_at - self.since).total_seconds() // 60)
            minute = min(max(minute, 0), minutes - 1)
            self.jobs[minute] += 1
            recent = finished_at >= window_start
            self.window_jobs += recent
            if status == Status.FAILED:
                self.failed[minute] += 1
                continue
            self.audio[minute] += duration or 0.0
            if recent:
                self.window_audio += duration or 0.0
            if rtf is not None:
                self.rtfs.append(rtf)

    def per_minute(self) -> list[dict[str, Any]]:
        return [
            {
                "minute": (self.since + timedelta(minutes=i + 1)).isoformat(),
                "jobs": self.jobs[i],
                "failed": self.failed[i],
                "audio_seconds": round(self.audio[i], 1),
            }
            for i in range(len(self.jobs))
        ]
