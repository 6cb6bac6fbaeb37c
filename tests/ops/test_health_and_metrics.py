"""/healthz, /readyz and /metrics (Prometheus text), in-process."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from asr.models import Transcription
from asr.ops import health
from asr.ops import redis_state
from tests.asr.test_api import make_job
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def scrape(**headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = Client().get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_healthz_answers_while_the_process_runs() -> None:
    assert Client().get("/healthz").json() == {"status": "ok"}


def test_readyz_is_200_when_database_migrations_redis_and_storage_are_there() -> None:
    response = Client().get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"] == {
        "database": {"ok": True},
        "migrations": {"ok": True},
        "redis": {"ok": True},
        "storage": {"ok": True},
    }


def test_readyz_is_503_saying_redis_is_unreachable(settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"]["ok"] is False
    assert "Connection" in body["checks"]["redis"]["error"]
    assert body["checks"]["database"] == {"ok": True}


def test_readyz_is_503_listing_unapplied_migrations(monkeypatch: Any) -> None:
    monkeypatch.setattr(health, "_migrations_seen_applied", False)
    real = MigrationExecutor.migration_plan

    def pending(self: Any, targets: Any, clean_start: bool = False) -> Any:
        plan = real(self, targets, clean_start)
        return plan or [(self.loader.graph.nodes[("asr", "0001_initial")], False)]

    monkeypatch.setattr(MigrationExecutor, "migration_plan", pending)
    response = Client().get("/readyz")
    assert response.status_code == 503
    migrations = response.json()["checks"]["migrations"]
    assert migrations["ok"] is False
    assert migrations["pending"] == ["asr.0001_initial"]
    assert "manage.py migrate" in migrations["error"]


def test_metrics_count_queues_workers_jobs_timings_and_failures(
    fill_queue: Any,
) -> None:
    # given queued messages, a live asr worker and jobs in every state
    fill_queue("asr", 4)
    fill_queue("bots", 1)
    redis_state.worker_heartbeat(
        hostname="gpu1@test", queues=["asr"], concurrency=1, ttl=30
    )
    owner = UserFactory()
    now = timezone.now()
    for rtf, duration in [(0.04, 10.0), (0.3, 20.0)]:
        make_job(
            owner,
            status=Transcription.Status.SUCCEEDED,
            created_at=now - timedelta(seconds=30),
            started_at=now - timedelta(seconds=20),
            finished_at=now,
            duration=duration,
            processing_seconds=duration * rtf,
            real_time_factor=rtf,
        )
    make_job(owner, status="failed", error_code="corrupt_audio", finished_at=now)
    make_job(owner, status="failed", error_code="corrupt_audio", finished_at=now)
    make_job(owner, status="failed", error_code="timeout", finished_at=now)
    make_job(owner)  # queued

    samples = scrape()

    assert samples[("kiki_queue_depth", (("queue", "asr"),))] == 4
    assert samples[("kiki_queue_depth", (("queue", "bots"),))] == 1
    assert samples[("kiki_queue_depth", (("queue", "default"),))] == 0
    assert samples[("kiki_redis_up", ())] == 1
    assert samples[("kiki_workers", (("queue", "asr"),))] == 1
    assert samples[("kiki_worker_processes", (("queue", "asr"),))] == 1
    assert samples[("kiki_jobs", (("state", "succeeded"),))] == 2
    assert samples[("kiki_jobs", (("state", "failed"),))] == 3
    assert samples[("kiki_jobs", (("state", "queued"),))] == 1
    assert samples[("kiki_job_failures_total", (("code", "corrupt_audio"),))] == 2
    assert samples[("kiki_job_failures_total", (("code", "timeout"),))] == 1
    assert samples[("kiki_audio_transcribed_seconds_total", ())] == 30.0
    rtf = "kiki_job_real_time_factor"
    assert samples[(f"{rtf}_bucket", (("le", "0.05"),))] == 1
    assert samples[(f"{rtf}_bucket", (("le", "0.5"),))] == 2
    assert samples[(f"{rtf}_count", ())] == 2
    assert samples[(f"{rtf}_sum", ())] == pytest.approx(0.34)
    wait = "kiki_job_queue_wait_seconds"
    assert samples[(f"{wait}_bucket", (("le", "5.0"),))] == 0
    assert samples[(f"{wait}_bucket", (("le", "15.0"),))] == 2
    assert samples[(f"{wait}_sum", ())] == pytest.approx(20.0)
    processing = "kiki_job_processing_seconds"
    assert samples[(f"{processing}_bucket", (("le", "1.0"),))] == 1
    assert samples[(f"{processing}_bucket", (("le", "10.0"),))] == 2


def test_metrics_report_redis_down_instead_of_failing(settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    samples = scrape()
    assert samples[("kiki_redis_up", ())] == 0
    assert ("kiki_jobs", (("state", "queued"),)) in samples


def test_metrics_token_when_one_is_set(settings: Any, broker_prefix: str) -> None:
    settings.METRICS_BEARER_TOKEN = "s3cret"
    assert Client().get("/metrics").status_code == 401
    assert scrape(Authorization="Bearer s3cret")


def test_metrics_without_a_token_answer_this_machine_only(
    settings: Any, broker_prefix: str
) -> None:
    # no token: a client from elsewhere is refused and told how to get in
    refused = Client(REMOTE_ADDR="203.0.113.7").get("/metrics")
    assert refused.status_code == 403
    assert b"METRICS_BEARER_TOKEN" in refused.content
    assert Client(REMOTE_ADDR="::1").get("/metrics").status_code == 200
    # a network opened for the scraper
    settings.METRICS_ALLOWED_NETWORKS = ["203.0.113.0/24"]
    assert Client(REMOTE_ADDR="203.0.113.7").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="198.51.100.1").get("/metrics").status_code == 403
    # with a token, the token decides, wherever the client is
    settings.METRICS_BEARER_TOKEN = "s3cret"
    remote = Client(REMOTE_ADDR="198.51.100.1")
    assert remote.get("/metrics").status_code == 401
    assert remote.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200
