"""Sending Celery tasks by name: the one way services enqueue work.

Services name the task they want run; they never import a task module, which
imports the services. ``CELERY_TASK_ROUTES`` picks the queue from the name, as it
would for ``task.apply_async``. Every row a task works on is written before the task
is sent, and a periodic reconciler re-sends what a row still needs, so a broker
outage must not fail the request or the task that committed: a failed send is
logged and reported, not raised.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from kikipounamu.celery import app

logger = logging.getLogger(__name__)


def send(name: str, args: Sequence[Any] = (), *, what: str, **options: Any) -> bool:
    """Send task ``name`` with ``args``; False (logged) if the broker refused it.

    ``what`` names the work in the log line ("job <id>", "chunk 3 of job <id>").
    ``options`` are ``apply_async``'s (``task_id``, ``countdown``, time limits).
    No task result is ever waited on (outcomes live in rows): without
    ``ignore_result`` the sender would also subscribe to each task's result.
    """
    try:
        app.send_task(name, args=list(args), ignore_result=True, **options)
    except Exception:
        logger.warning(
            "%s: enqueue of %s failed, left for the reconciler",
            what,
            name,
            exc_info=True,
        )
        return False
    return True


def revoke(task_ids: Sequence[str], *, what: str) -> None:
    """Tell every worker to drop these messages unrun.

    Best effort: callers revoke only messages that would find nothing to do anyway
    (their claim is a no-op); revoking spares a worker the trip.
    """
    if not task_ids:
        return
    try:
        app.control.revoke(list(task_ids))
    except Exception:
        logger.warning("%s: revoke not sent", what, exc_info=True)
