"""Admin for the bot: what each chat was sent, what is still owed, and why not."""

from __future__ import annotations

from django.contrib import admin

from bots.models import TelegramChat
from bots.models import TelegramJob
from bots.models import TelegramReply
from bots.models import TelegramUpdate


@admin.register(TelegramChat)
class TelegramChatAdmin(admin.ModelAdmin):
    list_display = ("chat_id", "type", "title", "language", "delivery_lease_until")
    search_fields = ("chat_id", "title")


@admin.register(TelegramUpdate)
class TelegramUpdateAdmin(admin.ModelAdmin):
    list_display = ("update_id", "chat_id", "status", "attempts", "received_at")
    list_filter = ("status",)
    search_fields = ("update_id", "chat_id")
    readonly_fields = [f.name for f in TelegramUpdate._meta.fields]


@admin.register(TelegramJob)
class TelegramJobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "chat_id",
        "media_kind",
        "state",
        "transcription",
        "error_code",
        "created_at",
    )
    list_filter = ("state", "media_kind")
    raw_id_fields = ("update", "chat", "transcription")


@admin.register(TelegramReply)
class TelegramReplyAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "chat_id",
        "key",
        "method",
        "state",
        "telegram_message_id",
        "attempts",
        "created_at",
        "sent_at",
    )
    list_filter = ("state", "method")
    search_fields = ("chat__chat_id",)
    raw_id_fields = ("chat", "update", "job", "edit_of")
