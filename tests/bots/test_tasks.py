"""The bot's tasks' retry policy, through Celery's own autoretry wrapper."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import Retry
from django.db import OperationalError

from bots import tasks

RETRYING = [
    tasks.process_update,
    tasks.process_updates,
    tasks.fetch_audio,
    tasks.answer,
    tasks.deliver,
]


@pytest.mark.parametrize("task", RETRYING, ids=lambda t: t.name)
def test_a_database_error_is_retried_within_a_minute_and_a_bounded_number_of_times(
    task: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[dict[str, Any]] = []

    def failing_run(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("server closed the connection unexpectedly")

    def retry(**kwargs: Any) -> Retry:
        asked.append(kwargs)
        raise Retry()

    monkeypatch.setattr(task, "_orig_run", failing_run)
    monkeypatch.setattr(task, "retry", retry)
    for retries in range(12):
        task.push_request(retries=retries)
        try:
            with pytest.raises(Retry):
                task.run(1)
        finally:
            task.pop_request()

    # Celery's default without a back-off is 3 minutes between tries.
    assert all(0 <= a["countdown"] <= 60 for a in asked), asked
    assert all(0 < a["max_retries"] <= 30 for a in asked), asked
