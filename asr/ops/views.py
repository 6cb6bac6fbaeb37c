"""HTTP side of operations: /readyz, /metrics, and the staff dashboard /ops/."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.http import HttpResponse
from django.http import JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import generate_latest

from asr.ops import health
from asr.ops import metrics


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """200 when the database, its migrations and Redis are all there; 503 otherwise."""
    ready, report = health.readiness()
    return JsonResponse(report, status=200 if ready else 503)


@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.METRICS_BEARER_TOKEN
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return HttpResponse("unauthorized\n", status=401, content_type="text/plain")
    elif not metrics.client_allowed(request.META.get("REMOTE_ADDR", "")):
        return HttpResponse(
            "forbidden: /metrics answers this machine only; set METRICS_BEARER_TOKEN "
            "(or METRICS_ALLOWED_NETWORKS) to read it from elsewhere\n",
            status=403,
            content_type="text/plain",
        )
    return HttpResponse(
        generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST
    )


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    if not request.user.is_staff:
        raise PermissionDenied("The operations dashboard is for staff.")
    changelist = reverse("admin:asr_transcription_changelist")
    return render(
        request,
        "asr/ops.html",
        {
            "interval_seconds": settings.OPS_DASHBOARD_INTERVAL,
            "failed_jobs_url": f"{changelist}?status__exact=failed",
        },
    )
