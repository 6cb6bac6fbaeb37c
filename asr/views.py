"""The staff upload page. It is a shell: uploads go to the REST API with the session,
dictation streams to the live socket (/ws/live/), and the list lives over the
WebSocket feed."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from asr.realtime.endpointing import ACCEPTED_RATES
from asr.selectors import served_language_list


@login_required
@ensure_csrf_cookie
def upload_page(request: HttpRequest) -> HttpResponse:
    if not request.user.is_staff:
        raise PermissionDenied("The upload page is for staff.")
    return render(
        request,
        "asr/upload.html",
        {
            # Only what the workers' engines serve (all codes while none has said).
            "languages": served_language_list("asr"),
            "max_upload_mb": settings.ASR_MAX_UPLOAD_BYTES // 1_000_000,
            "heartbeat_seconds": settings.WS_HEARTBEAT_SECONDS,
            # The microphone's rate is sent as it is when the live socket takes it.
            "live_rates": ACCEPTED_RATES,
        },
    )
