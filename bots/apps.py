from django.apps import AppConfig


class BotsConfig(AppConfig):
    """The Telegram bot: webhook, update handling and durable reply delivery.

    Its models, webhook and tasks arrive with the Telegram issue; the app exists now so
    that routing (`bots.*` on the `bots` queue) and the layout are in place.
    """

    name = "bots"
    verbose_name = "Bots"
    default_auto_field = "django.db.models.BigAutoField"
