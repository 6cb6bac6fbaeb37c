from django.apps import AppConfig


class AsrConfig(AppConfig):
    name = "asr"
    verbose_name = "Speech recognition"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from asr import realtime
        from asr.signals import transcription_event

        transcription_event.connect(
            realtime.on_transcription_event, dispatch_uid="asr.realtime.push"
        )
