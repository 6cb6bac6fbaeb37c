"""Signal receivers: how webhooks hear that a job finished.

``transcription_events_recorded`` comes inside the transaction that records the
job's event, so the delivery rows are written with the finish or not at all.
"""

from __future__ import annotations

from typing import Any

from webhooks import services


def transcription_events_recorded(sender: Any, pairs: list[Any], **_: Any) -> None:
    services.deliveries_create(pairs)
