"""A worker keeps its database connection from task to task, as a web process does
from request to request, and still drops one that is too old or broken."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from celery.fixups.django import DjangoWorkerFixup
from django.db import connection

from asr.ops import celery_signals
from kikipounamu.celery import app

pytestmark = pytest.mark.django_db(transaction=True)


def _one_task(fixup: DjangoWorkerFixup) -> None:
    """What the worker's signals do around one task that reads the database."""
    task = SimpleNamespace(request=SimpleNamespace(is_eager=False))
    fixup.on_task_prerun(task)
    celery_signals._close_old_connections()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    celery_signals._close_old_connections()
    fixup.on_task_postrun(task)


@pytest.fixture
def kept_connections(settings):
    # The pytest process itself runs with CONN_MAX_AGE=0 (tests/settings.py); a
    # worker runs with the project's setting.
    settings.DATABASES["default"]["CONN_MAX_AGE"] = 600
    connection.settings_dict["CONN_MAX_AGE"] = 600
    yield
    connection.settings_dict["CONN_MAX_AGE"] = 0
    connection.close()


def test_reuse_is_configured():
    assert app.conf.get("CELERY_DB_REUSE_MAX") >= 100


def test_connection_is_kept_between_tasks(kept_connections):
    fixup = DjangoWorkerFixup(app)
    connection.connect()
    opened = connection.connection
    for _ in range(5):
        _one_task(fixup)
    assert connection.connection is opened


def test_connection_past_its_age_is_replaced(kept_connections):
    fixup = DjangoWorkerFixup(app)
    _one_task(fixup)
    opened = connection.connection
    assert opened is not None
    connection.close_at = time.monotonic() - 1
    _one_task(fixup)
    assert connection.connection is not None
    assert connection.connection is not opened
