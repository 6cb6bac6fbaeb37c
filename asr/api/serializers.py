from __future__ import annotations

import functools
from typing import Any

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from asr.formats import FORMATS
from asr.models import Transcription
from asr.models import TranscriptionEvent
from asr.selectors import queue_position
from asr.selectors import transcription_eta_seconds
from asr.ws_tokens import ws_token_for_job
from kikipounamu.api import StrictQuerySerializer


@extend_schema_field(OpenApiTypes.BINARY)
class AudioFileField(serializers.FileField):
    """An uploaded file. drf-spectacular describes a FileField as the URL it reads
    as, in requests too (short of COMPONENT_SPLIT_REQUEST): this one is the bytes."""


class TranscriptionCreateSerializer(serializers.Serializer):
    file = AudioFileField(
        allow_empty_file=True,
        help_text="The audio: WAV, FLAC, MP3, OGG (Opus/Vorbis), M4A/AAC, WebM or MP4.",
    )
    language = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=16,
        help_text="ISO 639-1 code such as 'en'; empty or 'auto' to detect it.",
    )
    webhook_url = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=2048,
        help_text="Called when the job finishes (transcription.succeeded, .failed "
        "or .cancelled), signed with your job webhook secret "
        "(/api/v1/webhooks/job-secret). http(s), reaching a public address.",
    )


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class TranscriptionSerializer(serializers.ModelSerializer):
    error = serializers.SerializerMethodField()
    links = serializers.SerializerMethodField()
    owner = serializers.SerializerMethodField()

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
            "webhook_url",
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

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_owner(self, obj: Transcription) -> str | None:
        # Not a field with source="owner.get_username": for a callable source DRF
        # inspects its signature on every call (a tenth of a representation).
        owner = obj.owner
        return owner.get_username() if owner is not None else None

    @extend_schema_field(ErrorSerializer(allow_null=True))
    def get_error(self, obj: Transcription) -> dict[str, str] | None:
        return obj.error()

    @extend_schema_field(serializers.DictField(child=serializers.URLField()))
    def get_links(self, obj: Transcription) -> dict[str, str]:
        return job_links(obj, self.context.get("request"))


# A stand-in id: the links' URL patterns are reversed once per process with it, then
# filled in per job (reverse() costs ~30 us a call, eight calls a job).
_ID = "00000000-0000-0000-0000-000000000000"


@functools.cache
def _link_templates() -> dict[str, str]:
    templates = {"self": reverse("asr-api:transcription-detail", args=[_ID])}
    for fmt in FORMATS:
        templates[fmt] = reverse("asr-api:transcription-transcript", args=[_ID, fmt])
    templates["audio"] = reverse("asr-api:transcription-audio", args=[_ID])
    templates["retry"] = reverse("asr-api:transcription-retry", args=[_ID])
    templates["events"] = reverse("asr-api:transcription-events", args=[_ID])
    return templates


def job_links(obj: Transcription, request: Any = None) -> dict[str, str]:
    """The job's links: absolute with a request, paths without (pushed events)."""
    job_id = str(obj.id)
    base = request.build_absolute_uri("/").rstrip("/") if request is not None else ""
    links = {
        name: base + path.replace(_ID, job_id)
        for name, path in _link_templates().items()
    }
    links["websocket"] = websocket_url(request, obj)
    return links


@functools.cache
def _shared_serializer() -> TranscriptionSerializer:
    # A ModelSerializer builds its ~30 fields on every instantiation (a fifth of a
    # submit's CPU): one instance per process, with no request in its context, serves
    # every representation; only the links depend on the request.
    serializer = TranscriptionSerializer()
    serializer.fields  # noqa: B018 -- built once, here, not raced for later
    return serializer


def transcription_representation(
    obj: Transcription, request: Any = None
) -> dict[str, Any]:
    """What TranscriptionSerializer(obj, context={"request": request}).data gives,
    without building a serializer per call."""
    data = dict(_shared_serializer().to_representation(obj))
    if request is not None:
        data["links"] = job_links(obj, request)
    return data


def websocket_url(request: Any, obj: Transcription) -> str:
    """The job's WebSocket: in an API answer, with a signed token for clients that
    have no session; in what is pushed over a WebSocket (no request), the path only:
    its receivers are already watching (and signing costs every push ~0.1 ms)."""
    if request is None:
        return f"/ws/transcriptions/{obj.id}/"
    path = f"/ws/transcriptions/{obj.id}/?token={ws_token_for_job(obj)}"
    scheme = "wss" if request.is_secure() else "ws"
    return f"{scheme}://{request.get_host()}{path}"


class TranscriptionEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = TranscriptionEvent
        fields = ["seq", "kind", "data", "created_at"]
        read_only_fields = fields


class TranscriptDocumentSerializer(serializers.Serializer):
    """The transcript as JSON (asr.formats.to_json), for the schema."""

    id = serializers.UUIDField()
    language = serializers.CharField(allow_null=True)
    duration = serializers.FloatField(allow_null=True)
    text = serializers.CharField(allow_blank=True)
    segments = serializers.ListField(
        child=serializers.DictField(),
        help_text="start and end in seconds, text, and words where the engine gives "
        "them.",
    )


class TranscriptionListQuerySerializer(StrictQuerySerializer):
    status = serializers.ChoiceField(
        choices=Transcription.Status.choices,
        required=False,
        help_text="Only jobs in this state.",
        error_messages={
            "invalid_choice": "'{input}' is not a job status; use one of "
            + ", ".join(Transcription.Status.values)
            + "."
        },
    )


def summary(obj: Transcription) -> dict[str, Any]:
    return {"id": str(obj.id), "status": obj.status}
