from django.contrib import admin

from asr.models import Transcription


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
        "created_at",
    ]
    list_filter = ["status", "source", "engine"]
    search_fields = ["id", "original_filename", "text", "audio_sha256", "task_id"]
    readonly_fields = [f.name for f in Transcription._meta.fields]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: object) -> bool:
        return False
