"""Pushes from live workers to the connection streaming a session (its group on the
channel layer). At most once, like every push: a final that does not arrive is read
from the database by the consumer (asr.realtime.live), a lost partial is replaced by
the next."""

from __future__ import annotations

from typing import Any

from channels.layers import get_channel_layer

from asr.models import Transcription
from asr.realtime import jobs
from asr.realtime import sender


def live_group(session_id: str) -> str:
    return f"live.{session_id}"


def _push(session_id: str, message: dict[str, Any]) -> None:
    sender.send_from_sync(get_channel_layer(), [live_group(session_id)], message)


def partial(session_id: str, index: int, result: dict[str, Any] | None) -> None:
    """A partial's text, or None: the partial was not wanted any more. Either way
    the stream may ask for the next one."""
    _push(session_id, {"type": "live.partial", "utterance": index, "result": result})


def final(session_id: str, final: dict[str, Any]) -> None:
    _push(session_id, {"type": "live.final", "final": final})


def finished(session_id: str, job: Transcription) -> None:
    _push(session_id, {"type": "live.finished", "job": jobs.job_payload(job)})
