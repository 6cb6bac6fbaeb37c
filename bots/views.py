"""The Telegram webhook: check the secret, store the update, answer at once."""

from __future__ import annotations

import json
import logging

from django.http import HttpRequest
from django.http import HttpResponse
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from bots import services
from kikipounamu.errors import ApplicationError

logger = logging.getLogger(__name__)


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


@csrf_exempt  # Telegram authenticates with the secret token header instead.
@require_POST
def telegram_webhook(request: HttpRequest) -> HttpResponse:
    """POST /bots/telegram/webhook/: 200 for every update we stored, ignored or had
    seen before (anything else makes Telegram deliver it again); 403 without the
    secret; 400 for a body that is not an update."""
    if not services.webhook_secret_valid(
        token=request.headers.get(services.SECRET_HEADER)
    ):
        logger.warning("telegram webhook: call without the right secret token refused")
        return _error(403, "forbidden", "Wrong or missing secret token.")
    try:
        payload = json.loads(request.body)
    except ValueError:
        return _error(400, "invalid_json", "The body is not JSON.")
    try:
        services.telegram_update_receive(payload=payload)
    except ApplicationError as exc:
        return _error(exc.status_code, exc.code, exc.message)
    return HttpResponse(status=200)
