"""Admin for jobs: find, inspect (audio player, result, history), retry, cancel."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib import messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from asr import services
from asr.models import LiveUtterance
from asr.models import Transcription
from asr.models import TranscriptionChunk
from asr.models import TranscriptionEvent
from kikipounamu.errors import ApplicationError


class TranscriptionEventInline(admin.TabularInline):
    model = TranscriptionEvent
    fields = ("seq", "kind", "data", "created_at")
    readonly_fields = ("seq", "kind", "data", "created_at")
    extra = 0
    can_delete = False
    ordering = ["seq"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class TranscriptionChunkInline(admin.TabularInline):
    """The chunks of a fanned-out job: where each ran, how often, how long."""

    model = TranscriptionChunk
    fields = (
        "index",
        "start",
        "end",
        "status",
        "attempts",
        "worker_hostname",
        "worker_pid",
        "device",
        "engine_seconds",
        "error_code",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["index"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class LiveUtteranceInline(admin.TabularInline):
    """The finals of a live session, as they were stored."""

    model = LiveUtterance
    fields = (
        "index",
        "start",
        "end",
        "text",
        "language",
        "worker_hostname",
        "engine_seconds",
        "created_at",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["index"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Transcription)
class TranscriptionAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "status",
        "source",
        "owner",
        "original_filename",
        "duration",
        "engine",
        "error_code",
        "created_at",
    ]
    list_filter = ["status", "source", "engine", "error_code"]
    search_fields = ["id", "original_filename", "text", "audio_sha256", "task_id"]
    date_hierarchy = "created_at"
    list_select_related = ["owner"]
    inlines = [
        LiveUtteranceInline,
        TranscriptionChunkInline,
        TranscriptionEventInline,
    ]
    actions = ["retry_jobs", "cancel_jobs", "delete_audio"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "id",
                    "status",
                    "source",
                    "owner",
                    "error_code",
                    "error_message",
                ]
            },
        ),
        (
            "Audio",
            {
                "fields": [
                    "audio_player",
                    "original_filename",
                    "audio_format",
                    "audio_codec",
                    "audio_size",
                    "audio_sha256",
                    "duration",
                ]
            },
        ),
        (
            "Result",
            {"fields": ["language", "detected_language", "text", "segments", "meta"]},
        ),
        (
            "Processing",
            {
                "fields": [
                    "engine",
                    "model",
                    "device",
                    "attempts",
                    "task_id",
                    "worker_hostname",
                    "created_at",
                    "started_at",
                    "finished_at",
                    "decode_seconds",
                    "engine_seconds",
                    "processing_seconds",
                    "real_time_factor",
                ]
            },
        ),
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # The result is a record of what happened: nothing here is edited by hand.
        return [str(f) for fs in self.fieldsets for f in fs[1]["fields"]]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="Audio")
    def audio_player(self, obj: Transcription) -> str:
        if not obj.audio.name:
            return "(deleted)"
        url = reverse("asr-api:transcription-audio", args=[obj.pk])
        return format_html('<audio controls preload="none" src="{}"></audio>', url)

    @admin.action(description="Retry selected failed or cancelled jobs")
    def retry_jobs(
        self, request: HttpRequest, queryset: QuerySet[Transcription]
    ) -> None:
        self._each(request, queryset, services.transcription_retry, "retried")

    @admin.action(description="Cancel selected queued jobs")
    def cancel_jobs(
        self, request: HttpRequest, queryset: QuerySet[Transcription]
    ) -> None:
        self._each(request, queryset, services.transcription_cancel, "cancelled")

    @admin.action(description="Delete the audio of selected finished jobs")
    def delete_audio(
        self, request: HttpRequest, queryset: QuerySet[Transcription]
    ) -> None:
        done = sum(
            services.transcription_delete_audio(transcription=job) for job in queryset
        )
        self.message_user(request, f"Deleted the audio of {done} job(s).")

    def delete_model(self, request: HttpRequest, obj: Transcription) -> None:
        # Through the service, so that the stored audio goes with the row.
        services.transcriptions_delete(
            transcriptions=Transcription.objects.filter(pk=obj.pk)
        )

    def delete_queryset(
        self, request: HttpRequest, queryset: QuerySet[Transcription]
    ) -> None:
        services.transcriptions_delete(transcriptions=queryset)

    def _each(
        self,
        request: HttpRequest,
        queryset: QuerySet[Transcription],
        action: Any,
        verb: str,
    ) -> None:
        done = 0
        for job in queryset:
            try:
                action(transcription=job)
                done += 1
            except ApplicationError as exc:
                self.message_user(request, f"{job.pk}: {exc.message}", messages.WARNING)
        self.message_user(request, f"{done} job(s) {verb}.")
