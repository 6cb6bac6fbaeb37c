from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from asr.formats import FORMATS
from asr.models import Transcription
from asr.models import TranscriptionEvent
from asr.selectors import queue_position
from asr.selectors import transcription_eta_seconds


class TranscriptionCreateSerializer(serializers.Serializer):
    file = serializers.FileField(
        allow_empty_file=True,
        help_text="The audio: WAV, FLAC, MP3, OGG (Opus/Vorbis), M4A/AAC, WebM or MP4.",
    )
    language = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=16,
        help_text="ISO 639-1 code such as 'en'; empty or 'auto' to detect it.",
    )


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class TranscriptionSerializer(serializers.ModelSerializer):
    error = serializers.SerializerMethodField()
    links = serializers.SerializerMethodField()
    owner = serializers.CharField(
        source="owner.get_username", default=None, read_only=True
    )

    class Meta:
        model = Transcription
        fields = [
            "id",
            "status",
            "source",
            "owner",
            "original_filename",
            "audio_format",
            "audio_size",
            "audio_sha256",
            "duration",
            "language",
            "detected_language",
            "engine",
            "model",
            "device",
            "text",
            "segments",
            "meta",
            "error",
            "attempts",
            "queue_position",
            "eta_seconds",
            "processed_seconds",
            "event_seq",
            "task_id",
            "worker_hostname",
            "created_at",
            "started_at",
            "finished_at",
            "decode_seconds",
            "engine_seconds",
            "processing_seconds",
            "real_time_factor",
            "links",
        ]
        read_only_fields = fields

    queue_position = serializers.SerializerMethodField(
        help_text="1 for the next job to run; null unless queued."
    )

    def get_queue_position(self, obj: Transcription) -> int | None:
        return queue_position(obj)

    eta_seconds = serializers.SerializerMethodField(
        help_text="Estimated seconds until a queued job is done, from how fast recent "
        "jobs ran; null unless queued or with nothing to estimate from."
    )

    def get_eta_seconds(self, obj: Transcription) -> int | None:
        return transcription_eta_seconds(obj)

    @extend_schema_field(ErrorSerializer(allow_null=True))
    def get_error(self, obj: Transcription) -> dict[str, str] | None:
        return obj.error()

    @extend_schema_field(serializers.DictField(child=serializers.URLField()))
    def get_links(self, obj: Transcription) -> dict[str, str]:
        request = self.context.get("request")

        def url(path: str) -> str:
            return request.build_absolute_uri(path) if request else path

        links = {"self": url(reverse("asr-api:transcription-detail", args=[obj.id]))}
        for fmt in FORMATS:
            links[fmt] = url(
                reverse("asr-api:transcription-transcript", args=[obj.id, fmt])
            )
        links["audio"] = url(reverse("asr-api:transcription-audio", args=[obj.id]))
        links["retry"] = url(reverse("asr-api:transcription-retry", args=[obj.id]))
        links["events"] = url(reverse("asr-api:transcription-events", args=[obj.id]))
        links["websocket"] = websocket_url(request, obj)
        return links


def websocket_url(request: Any, obj: Transcription) -> str:
    """The job's WebSocket, with a signed token for clients that have no session."""
    from asr.realtime import ws_token_for_job

    path = f"/ws/transcriptions/{obj.id}/?token={ws_token_for_job(obj)}"
    if request is None:
        return path
    scheme = "wss" if request.is_secure() else "ws"
    return f"{scheme}://{request.get_host()}{path}"


class TranscriptionEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = TranscriptionEvent
        fields = ["seq", "kind", "data", "created_at"]
        read_only_fields = fields


class TranscriptionListQuerySerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=Transcription.Status.choices, required=False
    )


def summary(obj: Transcription) -> dict[str, Any]:
    return {"id": str(obj.id), "status": obj.status}
