"""Business logic of the Telegram bot, after the webhook stored an update
(``bots.webhook``). The path of one voice message, and where each step's state lives:

1. ``updates``: the stored update becomes the chat's reply rows (the "Recognizing…"
   acknowledgement, or a polite refusal) and a ``TelegramJob``, in one transaction;
   then delivery and the download are enqueued.
2. ``fetch``: getFile, download, and ``asr.services.transcription_create`` (source
   telegram), the job linked to it in the same transaction.
3. ``answer`` (enqueued by the ``transcription_event`` receiver): the result, read
   from the job's row, as reply parts: the acknowledgement edited into the
   transcript's first part, then the rest, then .txt/.srt documents.
4. ``delivery``: a chat's parts sent one at a time, in order, under a per-chat lease
   (``lease``: short, renewed while its task works, handed on by ``bots.reclaim_leases``
   when its task died); each part is marked before its call and recorded after.
5. ``reconcile`` (beat): whatever step's task was lost is enqueued again.

Beside them: ``dispatch`` (the bot's tasks, sent by name), ``retry`` (transient
failures and back-off), ``webhook_admin`` (registering the webhook). Every step is
idempotent: it starts with a conditional UPDATE (or a unique insert) that only one
attempt can win.
"""

from bots.services.answer import telegram_job_answer
from bots.services.delivery import DeliveryOutcome
from bots.services.delivery import telegram_chat_deliver
from bots.services.delivery import telegram_delivery_release
from bots.services.fetch import telegram_job_fetch
from bots.services.lease import telegram_leases_reclaim
from bots.services.reconcile import telegram_reconcile
from bots.services.retry import RetryLater
from bots.services.updates import chat_language_set
from bots.services.updates import telegram_update_process
from bots.services.webhook_admin import ALLOWED_UPDATES
from bots.services.webhook_admin import bot_check
from bots.services.webhook_admin import webhook_delete
from bots.services.webhook_admin import webhook_set

__all__ = [
    "ALLOWED_UPDATES",
    "DeliveryOutcome",
    "RetryLater",
    "bot_check",
    "chat_language_set",
    "telegram_chat_deliver",
    "telegram_delivery_release",
    "telegram_job_answer",
    "telegram_job_fetch",
    "telegram_leases_reclaim",
    "telegram_reconcile",
    "telegram_update_process",
    "webhook_delete",
    "webhook_set",
]
