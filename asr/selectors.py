"""Reads of transcription jobs, scoped to what the user may see."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404

from asr.models import Transcription


def transcription_visible_to(*, user: Any) -> QuerySet[Transcription]:
    """Staff see every job; everyone else only their own."""
    qs = Transcription.objects.all()
    if not (user and user.is_authenticated):
        return qs.none()
    if user.is_staff:
        return qs
    return qs.filter(owner=user)


def transcription_list(
    *, user: Any, status: str | None = None
) -> QuerySet[Transcription]:
    qs = transcription_visible_to(user=user).select_related("owner")
    if status:
        qs = qs.filter(status=status)
    return qs.order_by("-created_at")


def transcription_get(*, user: Any, transcription_id: Any) -> Transcription:
    """The job, or 404 (also for another user's job: its existence is not revealed)."""
    try:
        return transcription_visible_to(user=user).get(pk=transcription_id)
    except (Transcription.DoesNotExist, ValueError):
        raise Http404 from None
