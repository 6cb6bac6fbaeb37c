from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from django.conf import settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from kikipounamu import local
from kikipounamu.redis_server import stop_embedded_redis
from tests import netns
from tests import processes
from tests.factories import UserFactory
from tests.s3_server import S3Server

_STARTED_BEFORE = pytest.StashKey[int]()
_LOGS_SHOWN = pytest.StashKey[bool]()
_OWN_REDIS = pytest.StashKey["EmbeddedRedis | None"]()


def pytest_sessionstart(session: pytest.Session) -> None:
    # The test suite is an entry point: it makes this checkout's folders and, unless
    # REDIS_URL is set, its embedded Redis (settings only declare them).
    session.stash[_OWN_REDIS] = local.prepare()


def pytest_sessionfinish(session: pytest.Session) -> None:
    # A Redis this run started goes with it, unless asked to stay; one that was
    # already up (a running system's, `manage.py redis start`) stays.
    server = session.stash.get(_OWN_REDIS, None)
    if server is not None and server.started and not os.environ.get("KIKI_KEEP_REDIS"):
        stop_embedded_redis(server.data_dir)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_STARTED_BEFORE] = len(processes.STARTED)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[pytest.TestReport]:
    report = yield
    # A failure that involves a worker or web process is explained by their logs,
    # which are files under var/test-logs: on a CI machine only the report is kept.
    # Shown once per test: those it started, and those of fixtures still running.
    if report.failed and not item.stash.get(_LOGS_SHOWN, False):
        item.stash[_LOGS_SHOWN] = True
        before = item.stash.get(_STARTED_BEFORE, 0)
        for i, proc in enumerate(processes.STARTED):
            if i >= before or proc.popen.poll() is None:
                report.sections.append(
                    (f"end of {proc.log_path.name}", proc.log_tail())
                )
    return report


def _delete_run_keys() -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    # Every namespace of this run (see tests/settings.py).
    for key in client.scan_iter(match=f"kiki-test-{settings.RUN_ID}*", count=1000):
        client.delete(key)


@pytest.fixture(scope="session", autouse=True)
def _run_scoped_redis_and_media() -> Iterator[None]:
    # This run's queues and media are its own (see tests/settings.py); they go when
    # the run ends.
    media = Path(settings.MEDIA_ROOT)
    media.mkdir(parents=True, exist_ok=True)
    yield
    _delete_run_keys()
    shutil.rmtree(media, ignore_errors=True)


@pytest.fixture(autouse=True)
def _fresh_throttle_counters() -> None:
    # User ids come round again once a test's transaction is rolled back, and the
    # rate-limit counters in the shared Redis cache would outlive their users.
    client = redis.Redis.from_url(settings.REDIS_URL)
    prefix = settings.CACHES["default"]["KEY_PREFIX"]
    for key in client.scan_iter(match=f"{prefix}:throttle*", count=1000):
        client.delete(key)


@pytest.fixture
def user(db: Any) -> Any:
    return UserFactory()


@pytest.fixture
def staff_user(db: Any) -> Any:
    return UserFactory(is_staff=True)


@pytest.fixture
def api_client(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


# Real processes -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def worker(django_db_setup: Any, django_db_blocker: Any) -> Iterator[processes.Process]:
    """A real Celery worker process (whisper engine) on the test database."""
    proc = processes.start_worker()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def live_worker(
    django_db_setup: Any, django_db_blocker: Any
) -> Iterator[processes.Process]:
    """A real live worker (the Procfile's worker_live: both live queues, whisper),
    for one module, once its engine has told the doors what it serves."""
    proc = processes.start_worker(queues="live,live_partial", engine_reported=True)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def web(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    """A real uvicorn serving kikipounamu.asgi on a free port; yields its base URL."""
    proc, base = processes.start_web()
    yield base
    proc.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS, tests/s3_server.py) with one bucket, started on
    first use (about a second). ``.env()`` points an application process at it.
    Shared by the session: a test that stops it uses ``own_s3_server``."""
    server = S3Server().start()
    yield server
    server.close()


@pytest.fixture
def own_s3_server() -> Iterator[S3Server]:
    """A fresh S3 server for one test, which may stop and start it (``.outage()``)."""
    server = S3Server().start()
    yield server
    server.close()


@pytest.fixture
def second_host() -> Iterator[netns.SecondHost]:
    """A second host (a network namespace with a veth link, tests/netns.py), removed
    after the test whatever happens; skipped where namespaces cannot be made."""
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(f"no second host: {reason}")
    with netns.second_host() as host:
        yield host


class LiveApi:
    """A token-authenticated HTTP client of the live web process."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"
        self.accepted: list[str] = []

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def submit(
        self, path: Path | str, *, name: str | None = None, **data: str
    ) -> requests.Response:
        path = Path(path)
        with path.open("rb") as fh:
            response = self.session.post(
                self.url("/api/v1/transcriptions"),
                files={"file": (name or path.name, fh)},
                data=data,
                timeout=30,
            )
        if response.status_code == 202:
            self.accepted.append(response.json()["id"])
        return response

    def get(self, job_id: str) -> dict[str, Any]:
        response = self.session.get(
            self.url(f"/api/v1/transcriptions/{job_id}"), timeout=10
        )
        response.raise_for_status()
        return response.json()

    def wait(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(job_id)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")

    def settle(self, timeout: float = 60) -> None:
        """Wait (bounded, quietly) until every job this client had accepted is done.
        A job still being written when the test's database is flushed can deadlock
        PostgreSQL's TRUNCATE against the worker's transaction, and the flush fails."""
        deadline = time.monotonic() + timeout
        for job_id in self.accepted:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                self.wait(job_id, timeout=left)
            except (TimeoutError, requests.RequestException):
                return


@pytest.fixture
def live_api(
    request: pytest.FixtureRequest, transactional_db: Any, web: str
) -> Iterator[LiveApi]:
    """The live API as a fresh user. Jobs it submits run if a `worker` is in use,
    and are let finish before the test's database is flushed."""
    user = UserFactory()
    token = Token.objects.create(user=user)
    api = LiveApi(web, token.key)
    yield api
    if "worker" in request.fixturenames:
        api.settle()


@pytest.fixture(scope="module")
def own_web(
    request: pytest.FixtureRequest, django_db_setup: Any, django_db_blocker: Any
) -> Iterator[str]:
    """A web process in the module's own queue namespace (its ``NAMESPACE`` env), for
    modules that run their own workers: the session worker cannot take their jobs."""
    proc, base = processes.start_web(**request.module.NAMESPACE)
    yield base
    proc.stop()


@pytest.fixture
def own_live_api(transactional_db: Any, own_web: str) -> LiveApi:
    """Like ``live_api``, against ``own_web``."""
    return LiveApi(own_web, Token.objects.create(user=UserFactory()).key)
