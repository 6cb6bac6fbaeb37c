import os

from django.apps import AppConfig


class BotsConfig(AppConfig):
    """The Telegram bot: webhook, update handling and durable reply delivery."""

    name = "bots"
    verbose_name = "Bots"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # python-telegram-bot 22 returns durations and retry_after as timedelta when
        # this is set, and warns on every read otherwise; 23 makes it the default.
        os.environ.setdefault("PTB_TIMEDELTA", "true")

        from asr.signals import transcription_event
        from bots import receivers

        transcription_event.connect(
            receivers.transcription_event_received,
            dispatch_uid="bots.transcription_event_received",
        )
