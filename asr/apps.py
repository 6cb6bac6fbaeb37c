from django.apps import AppConfig


class AsrConfig(AppConfig):
    name = "asr"
    verbose_name = "Speech recognition"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Worker-side hooks (logging context per task, heartbeats) are Celery
        # signal receivers: connected by importing them, in every process.
        from asr.ops import celery_signals  # noqa: F401
        from asr.realtime import jobs
        from asr.signals import transcription_event

        transcription_event.connect(
            jobs.on_transcription_event, dispatch_uid="asr.realtime.push"
        )
