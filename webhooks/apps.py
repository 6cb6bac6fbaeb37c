from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    """Completion webhooks: signed, retried callbacks when a job finishes."""

    name = "webhooks"
    verbose_name = "Webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from asr.signals import transcription_events_recorded
        from webhooks import receivers

        transcription_events_recorded.connect(
            receivers.transcription_events_recorded,
            dispatch_uid="webhooks.transcription_events_recorded",
        )
