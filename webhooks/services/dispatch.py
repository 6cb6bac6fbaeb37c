"""The webhooks' tasks, sent by name (``kikipounamu.dispatch``) after the rows they
work on are committed.

A broker outage must not fail the finish that committed the rows:
``webhooks.reconcile`` sends what they still need.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

from kikipounamu import dispatch


def enqueue_deliveries(
    delivery_ids: Iterable[UUID | str], *, countdown: float | None = None
) -> None:
    """Send ``webhooks.deliver`` for each delivery (``countdown``: a retry's wait)."""
    ids = [str(pk) for pk in delivery_ids]
    if not ids:
        return
    options: dict[str, Any] = {} if countdown is None else {"countdown": countdown}
    for pk in ids:
        dispatch.send(
            "webhooks.deliver", [pk], what=f"webhook delivery {pk}", **options
        )
