"""The Telegram bot's durable state: chats, received updates, jobs and owed replies.

Every reply the bot owes a chat is a row before anything is sent, so that a process
that dies at any point leaves behind exactly what is still to do.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from asr.models import Transcription


class TelegramChat(models.Model):
    """A chat the bot talks in: its settings and the lease that orders its replies."""

    # Telegram's own chat id (negative for groups).
    chat_id = models.BigIntegerField(primary_key=True)
    type = models.CharField(max_length=16, blank=True)
    title = models.CharField(max_length=255, blank=True)
    # Set with /lang; empty means detect the language.
    language = models.CharField(max_length=16, blank=True)

    # One delivery task at a time per chat keeps its replies in order: it holds this
    # lease (named by its Celery task id, which survives retries and redelivery),
    # renewed while it works (bots.services.lease).
    delivery_owner = models.CharField(max_length=64, blank=True)
    delivery_lease_until = models.DateTimeField(null=True, blank=True)
    # Telegram asked us to wait (429 retry_after) or a back-off is running.
    delivery_not_before = models.DateTimeField(null=True, blank=True)
    # When a delivery task was last enqueued: the reconciler leaves young ones be.
    delivery_enqueued_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            # bots.reclaim_leases looks for held leases that ran out, every few
            # seconds: only held ones are in the index.
            models.Index(
                fields=["delivery_lease_until"],
                condition=~models.Q(delivery_owner=""),
                name="bots_chat_lease_held",
            )
        ]

    def __str__(self) -> str:
        return f"{self.chat_id} ({self.type or 'chat'})"


class TelegramUpdate(models.Model):
    """One webhook delivery, stored once: a repeated update_id is a no-op."""

    class Status(models.TextChoices):
        RECEIVED = "received"
        PROCESSED = "processed"
        FAILED = "failed"

    update_id = models.BigIntegerField(unique=True)
    chat_id = models.BigIntegerField(null=True, blank=True)
    payload = models.JSONField()
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.RECEIVED
    )
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "received_at"])]

    def __str__(self) -> str:
        return f"update {self.update_id} ({self.status})"


class TelegramJob(models.Model):
    """One recording a chat asked us to transcribe, from its update to its answer."""

    class State(models.TextChoices):
        FETCHING = "fetching"  # acknowledged; the file is still on Telegram
        TRANSCRIBING = "transcribing"  # a Transcription runs it
        ANSWERED = "answered"  # the reply parts (transcript or error) exist

    update = models.OneToOneField(
        TelegramUpdate, on_delete=models.CASCADE, related_name="job"
    )
    chat = models.ForeignKey(
        TelegramChat, on_delete=models.CASCADE, related_name="jobs"
    )
    # The message that holds the audio: replies quote it.
    message_id = models.BigIntegerField()
    media_kind = models.CharField(max_length=16)
    file_id = models.CharField(max_length=255)
    file_unique_id = models.CharField(max_length=64, blank=True)
    file_name = models.CharField(max_length=255, blank=True)
    mime_type = models.CharField(max_length=128, blank=True)
    file_size = models.BigIntegerField(null=True, blank=True)
    duration = models.FloatField(null=True, blank=True)
    language = models.CharField(max_length=16, blank=True)

    transcription = models.OneToOneField(
        Transcription,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="telegram_job",
    )
    state = models.CharField(
        max_length=16, choices=State.choices, default=State.FETCHING
    )
    fetch_attempts = models.PositiveIntegerField(default=0)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    answered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "created_at"])]

    def __str__(self) -> str:
        return f"telegram job {self.pk} ({self.state})"


class TelegramReply(models.Model):
    """One message the bot owes a chat; durable until Telegram has taken it.

    Parts of a chat go out in id order, one at a time. ``state`` says where a part
    stands: ``sending`` means a call was made whose outcome we do not know (the
    process died, or the answer timed out), so the next attempt repeats it.
    """

    class Method(models.TextChoices):
        SEND = "send_message"
        EDIT = "edit_message"
        DOCUMENT = "send_document"

    class State(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"
        SENT = "sent"
        FAILED = "failed"

    UNDELIVERED = (State.PENDING, State.SENDING)

    chat = models.ForeignKey(
        TelegramChat, on_delete=models.CASCADE, related_name="replies"
    )
    # The update this reply answers; with ``key`` it names the part uniquely, so
    # that creating the parts twice is impossible.
    update = models.ForeignKey(
        TelegramUpdate, on_delete=models.CASCADE, related_name="replies"
    )
    key = models.CharField(max_length=32)
    job = models.ForeignKey(
        TelegramJob,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="replies",
    )
    method = models.CharField(max_length=16, choices=Method.choices)
    text = models.TextField(blank=True)
    # For an edit: the part whose message becomes this one (the acknowledgement).
    edit_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reply_to_message_id = models.BigIntegerField(null=True, blank=True)
    # For a document: txt or srt, rendered from the job's row when it is sent.
    document_format = models.CharField(max_length=8, blank=True)

    state = models.CharField(
        max_length=16, choices=State.choices, default=State.PENDING
    )
    telegram_message_id = models.BigIntegerField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # Failures that count towards giving up (5xx, time-outs); 429s do not.
    errors = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["update", "key"], name="unique_reply_part")
        ]
        indexes = [models.Index(fields=["chat", "state", "id"])]

    def __str__(self) -> str:
        return f"reply {self.pk} {self.key} to {self.chat_id} ({self.state})"
