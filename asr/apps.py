from django.apps import AppConfig


class AsrConfig(AppConfig):
    name = "asr"
    verbose_name = "Speech recognition"
    default_auto_field = "django.db.models.BigAutoField"
