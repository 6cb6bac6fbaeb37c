"""JSON log lines carrying job, task and Telegram update ids."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from types import SimpleNamespace
from typing import Any

from django.conf import settings

from asr.ops import celery_signals
from kikipounamu import logs


def capture_json() -> tuple[logging.Logger, io.StringIO]:
    """A logger wired like the console handler of settings.LOGGING."""
    config = settings.LOGGING
    stream = io.StringIO()
    formatter_config = dict(config["formatters"]["json"])
    factory = formatter_config.pop("()")
    module, _, name = factory.rpartition(".")
    formatter = getattr(__import__(module, fromlist=[name]), name)(**formatter_config)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger("tests.ops.json")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_settings_log_json_with_the_context_filter() -> None:
    assert settings.LOG_FORMAT == "json"
    console = settings.LOGGING["handlers"]["console"]
    assert console["formatter"] == "json"
    assert console["filters"] == ["context"]


def test_lines_carry_the_ids_bound_around_them() -> None:
    logger, stream = capture_json()
    with logs.log_context(telegram_update_id=12345):
        logger.info("update %s received", 12345)
        with logs.log_context(job_id="j-1"):
            logger.info("job stored")
    logger.info("outside")
    first, second, third = lines(stream)
    assert first["message"] == "update 12345 received"
    assert first["level"] == "INFO"
    assert first["logger"] == "tests.ops.json"
    assert first["telegram_update_id"] == "12345"
    assert "job_id" not in first
    assert (second["job_id"], second["telegram_update_id"]) == ("j-1", "12345")
    assert "telegram_update_id" not in third


def test_a_celery_task_binds_its_task_id_and_job_id() -> None:
    logger, stream = capture_json()
    task = SimpleNamespace(name="asr.transcribe")
    celery_signals._bind_task(task_id="task-1", task=task, args=["job-9"])
    logger.info("inside the task")
    celery_signals._unbind_task(task_id="task-1")
    logger.info("after it")
    inside, after = lines(stream)
    assert (inside["task_id"], inside["job_id"]) == ("task-1", "job-9")
    assert "task_id" not in after


def test_api_requests_bind_the_job_id_of_their_url(
    admin_client: Any, monkeypatch: Any
) -> None:
    seen: list[dict[str, Any]] = []
    from asr import selectors

    real = selectors.transcription_get

    def spy(**kwargs: Any) -> Any:
        seen.append(logs.current())
        return real(**kwargs)

    monkeypatch.setattr(selectors, "transcription_get", spy)
    job_id = "00000000-0000-0000-0000-000000000001"
    assert admin_client.get(f"/api/v1/transcriptions/{job_id}").status_code == 404
    assert seen == [{"job_id": job_id}]
    assert logs.current() == {}
