"""Reading python-telegram-bot's types: which media a message holds, which command."""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass

from telegram import Chat
from telegram import Message
from telegram import Update

from bots.transport.bot_api import seconds

# Documents whose MIME type is none of audio/* but that are audio all the same.
AUDIO_DOCUMENT_TYPES = frozenset(
    {"application/ogg", "application/x-ogg", "video/ogg", "audio/x-flac"}
)
# A document sent as application/octet-stream (or without a type) is judged by name.
AUDIO_EXTENSIONS = frozenset(
    {".mp3", ".m4a", ".ogg", ".oga", ".opus", ".wav", ".flac", ".aac", ".weba"}
)
GROUP_TYPES = frozenset({Chat.GROUP, Chat.SUPERGROUP})

_COMMAND = re.compile(
    r"^/(?P<name>[A-Za-z0-9_]{1,32})(?:@(?P<addressee>[A-Za-z0-9_]{1,64}))?"
    r"(?:\s+(?P<args>.*))?$",
    re.DOTALL,
)


@dataclass(frozen=True)
class Media:
    """The one file of a message we could transcribe."""

    kind: str  # voice | audio | video_note | video | document
    file_id: str
    file_unique_id: str
    file_size: int | None
    duration: float | None
    mime_type: str
    file_name: str
    is_audio: bool  # False only for a document of another type

    @property
    def upload_name(self) -> str:
        """A file name for the job: the sender's, or one that says what it is."""
        if self.file_name:
            return self.file_name
        extension = {"voice": ".ogg", "video_note": ".mp4", "video": ".mp4"}.get(
            self.kind
        ) or (mimetypes.guess_extension(self.mime_type) or "")
        return f"telegram-{self.kind}{extension}"


@dataclass(frozen=True)
class Command:
    name: str  # lower-cased, without the slash
    addressee: str | None  # the bot named in /cmd@name
    args: str


def parse_update(payload: dict[str, object]) -> Update:
    return Update.de_json(payload, None)


def _is_audio_document(mime_type: str, file_name: str) -> bool:
    mime_type = mime_type.lower()
    if mime_type.startswith("audio/") or mime_type in AUDIO_DOCUMENT_TYPES:
        return True
    if mime_type in ("", "application/octet-stream"):
        name = file_name.lower()
        return any(name.endswith(ext) for ext in AUDIO_EXTENSIONS)
    return False


def media_of(message: Message | None) -> Media | None:
    """The audio-bearing file of ``message``: voice, audio, round video, video, or a
    document (which may turn out not to be audio)."""
    if message is None:
        return None
    if message.voice:
        v = message.voice
        return Media(
            "voice",
            v.file_id,
            v.file_unique_id,
            v.file_size,
            seconds(v.duration),
            v.mime_type or "audio/ogg",
            "",
            True,
        )
    if message.audio:
        a = message.audio
        return Media(
            "audio",
            a.file_id,
            a.file_unique_id,
            a.file_size,
            seconds(a.duration),
            a.mime_type or "",
            a.file_name or "",
            True,
        )
    if message.video_note:
        n = message.video_note
        return Media(
            "video_note",
            n.file_id,
            n.file_unique_id,
            n.file_size,
            seconds(n.duration),
            "video/mp4",
            "",
            True,
        )
    if message.video:
        w = message.video
        return Media(
            "video",
            w.file_id,
            w.file_unique_id,
            w.file_size,
            seconds(w.duration),
            w.mime_type or "video/mp4",
            w.file_name or "",
            True,
        )
    if message.document:
        d = message.document
        mime_type = d.mime_type or ""
        file_name = d.file_name or ""
        return Media(
            "document",
            d.file_id,
            d.file_unique_id,
            d.file_size,
            None,
            mime_type,
            file_name,
            _is_audio_document(mime_type, file_name),
        )
    return None


def command_of(message: Message | None) -> Command | None:
    if message is None or not message.text:
        return None
    match = _COMMAND.match(message.text.strip())
    if match is None:
        return None
    return Command(
        name=match["name"].lower(),
        addressee=match["addressee"],
        args=(match["args"] or "").strip(),
    )


def is_group(message: Message) -> bool:
    return message.chat.type in GROUP_TYPES


def for_the_bot(message: Message) -> bool:
    """Whether the bot acts on a message: in private chats all of them, in groups
    commands only (/transcribe as a reply to a voice message). The others are
    stored by the webhook and ignored by the task: telling them apart takes
    python-telegram-bot's types, which cost more than the rest of the webhook's
    request (see ``services.telegram_update_accept``)."""
    if is_group(message):
        return command_of(message) is not None
    return message.chat.type == Chat.PRIVATE
