"""Webhook updates as Telegram sends them, built from python-telegram-bot's types."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from typing import Any

from telegram import Audio
from telegram import Chat
from telegram import Document
from telegram import Message
from telegram import MessageEntity
from telegram import Update
from telegram import User
from telegram import Video
from telegram import VideoNote
from telegram import Voice

_ids = itertools.count(random.randint(10_000_000, 900_000_000))
USER = User(id=777, is_bot=False, first_name="Ana", username="ana")


def new_id() -> int:
    return next(_ids)


def private_chat(chat_id: int | None = None) -> Chat:
    return Chat(id=chat_id or new_id(), type=Chat.PRIVATE, first_name="Ana")


def group_chat(chat_id: int | None = None) -> Chat:
    return Chat(id=-(chat_id or new_id()), type=Chat.SUPERGROUP, title="Team")


def message(chat: Chat, **fields: Any) -> Message:
    text = fields.get("text")
    if text and text.startswith("/") and "entities" not in fields:
        length = len(text.split()[0])
        fields["entities"] = [
            MessageEntity(type=MessageEntity.BOT_COMMAND, offset=0, length=length)
        ]
    return Message(
        message_id=fields.pop("message_id", None) or new_id() % 100_000,
        date=dt.datetime.now(dt.UTC).replace(microsecond=0),
        chat=chat,
        from_user=USER,
        **fields,
    )


def update(msg: Message | None = None, **other: Any) -> dict[str, Any]:
    """The JSON body of one webhook call."""
    return Update(update_id=new_id(), message=msg, **other).to_dict()


def voice(file_id: str, unique: str = "u", *, size: int = 4000, seconds: int = 2):
    return Voice(
        file_id=file_id,
        file_unique_id=unique,
        duration=dt.timedelta(seconds=seconds),
        mime_type="audio/ogg",
        file_size=size,
    )


def audio(file_id: str, unique: str = "u", *, size: int = 4000, name="talk.mp3"):
    return Audio(
        file_id=file_id,
        file_unique_id=unique,
        duration=dt.timedelta(seconds=3),
        mime_type="audio/mpeg",
        file_name=name,
        file_size=size,
    )


def video_note(file_id: str, unique: str = "u", *, size: int = 4000) -> VideoNote:
    return VideoNote(
        file_id=file_id,
        file_unique_id=unique,
        length=240,
        duration=dt.timedelta(seconds=2),
        file_size=size,
    )


def video(file_id: str, unique: str = "u", *, size: int = 4000) -> Video:
    return Video(
        file_id=file_id,
        file_unique_id=unique,
        width=320,
        height=240,
        duration=dt.timedelta(seconds=2),
        mime_type="video/mp4",
        file_size=size,
    )


def document(
    file_id: str,
    unique: str = "u",
    *,
    mime_type: str,
    name: str,
    size: int = 4000,
) -> Document:
    return Document(
        file_id=file_id,
        file_unique_id=unique,
        file_name=name,
        mime_type=mime_type,
        file_size=size,
    )
