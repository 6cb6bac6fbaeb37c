"""Signed, expiring tokens that let an API client (no session) watch one job's
WebSocket: the ``links.websocket`` of the API's answers carries one."""

from __future__ import annotations

from django.conf import settings
from django.core import signing

from asr.models import Transcription

_WS_SALT = "asr.realtime.ws"


def ws_token_for_job(job: Transcription) -> str:
    """A signed, expiring token that lets its holder watch this one job."""
    return signing.dumps({"j": str(job.id)}, salt=_WS_SALT, compress=True)


def ws_token_job_id(token: str) -> str | None:
    try:
        data = signing.loads(token, salt=_WS_SALT, max_age=settings.WS_TOKEN_MAX_AGE)
    except signing.BadSignature:  # also SignatureExpired
        return None
    return data.get("j") if isinstance(data, dict) else None


def token_allows_job(*, token: str | None, transcription_id: str) -> bool:
    """Whether ``token`` is this job's valid signed token (no database read)."""
    return bool(token) and ws_token_job_id(token or "") == str(transcription_id)
