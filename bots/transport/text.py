"""What the bot says, and how a long transcript is cut into Telegram messages."""

from __future__ import annotations

import re

from telegram.constants import FileSizeLimit
from telegram.constants import MessageLimit

# Telegram's limit on a message's text, counted in UTF-16 code units (an emoji
# outside the Basic Multilingual Plane counts twice).
MAX_MESSAGE_LENGTH = int(MessageLimit.MAX_TEXT_LENGTH)
MAX_CAPTION_LENGTH = int(MessageLimit.CAPTION_LENGTH)
# Bots may download files up to this size from Telegram's servers.
MAX_DOWNLOAD_BYTES = int(FileSizeLimit.FILESIZE_DOWNLOAD)

# Break points, best first: a paragraph, a line, a sentence, a word.
_BREAKS = (
    re.compile(r"\n\s*\n"),
    re.compile(r"\n"),
    re.compile(
        r"(?<=[.!?\u2026\u3002\uff01\uff1f])\s+"
    ),  # and the ellipsis, CJK full stops
    re.compile(r"\s+"),
)


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _prefix_within(text: str, limit: int) -> int:
    """The largest n such that text[:n] is at most ``limit`` UTF-16 units."""
    if utf16_length(text) <= limit:
        return len(text)
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return index
    return len(text)


def split_message(text: str, limit: int = MAX_MESSAGE_LENGTH) -> list[str]:
    """Cut ``text`` into messages of at most ``limit`` UTF-16 units each.

    Each cut falls at the last paragraph break, else line break, else sentence end,
    else space within the limit, as long as that keeps at least half a message;
    only a text with no such break (one enormous word) is cut mid-word. The
    whitespace at a cut is dropped; nothing else is.
    """
    parts: list[str] = []
    rest = text.strip()
    while rest:
        # At least one character per part, whatever the limit, so that this ends.
        end = max(_prefix_within(rest, limit), 1)
        if end >= len(rest):
            parts.append(rest)
            break
        window = rest[: end + 1]  # a break right after the limit still counts
        cut = end
        for pattern in _BREAKS:
            found = [m for m in pattern.finditer(window) if m.start() >= end // 2]
            if found:
                cut = found[-1].start() or end
                break
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    return [part for part in parts if part]


def ack_text(position: int, eta_seconds: int | None = None) -> str:
    wait = f", about {_wait(eta_seconds)}" if eta_seconds else ""
    if position <= 1:
        return f"Recognizing… (you are next in the queue{wait})"
    return f"Recognizing… (position {position} in the queue{wait})"


def _wait(seconds: int) -> str:
    if seconds < 90:
        return f"{max(seconds, 1)} s"
    return f"{round(seconds / 60)} min"


HELP = (
    "Send me a voice message, an audio file, a round video or a video, and I will "
    "reply with what is said in it.\n\n"
    "Commands:\n"
    "/lang <code> - the language you speak (for example /lang de); /lang auto to "
    "detect it\n"
    "/transcribe - in a group, reply with it to a voice message to transcribe it\n"
    "/help - this message\n\n"
    f"Files up to {MAX_DOWNLOAD_BYTES // 1_000_000} MB; longer transcripts come with "
    "a .txt and an .srt file."
)

START = "Hello! " + HELP

NOT_MEDIA_HINT = (
    "Send me a voice message or an audio file and I will write down what is said. "
    "/help tells you more."
)

TRANSCRIBE_USAGE = (
    "Reply with /transcribe to a voice message, audio file or video to transcribe it."
)

NO_SPEECH = "I could not hear any speech in this recording."

CANCELLED = "This transcription was cancelled."

TRANSCRIPT_CONTINUES = (
    "The transcript is longer than I can send as messages: the rest is in the "
    "attached file."
)

DOCUMENT_CAPTION = "The full transcript"


def too_big(size: int) -> str:
    return (
        f"This file is {size / 1_000_000:.1f} MB, and Telegram lets bots download "
        f"files of at most {MAX_DOWNLOAD_BYTES // 1_000_000} MB. Send a shorter "
        "recording, or compress it (a voice message of an hour is well under the "
        "limit)."
    )


TOO_BIG_UNKNOWN_SIZE = (
    f"This file is larger than the {MAX_DOWNLOAD_BYTES // 1_000_000} MB that Telegram "
    "lets bots download. Send a shorter recording, or compress it."
)


def not_audio(mime_type: str) -> str:
    kind = f" ({mime_type})" if mime_type else ""
    return (
        f"This document{kind} is not audio, so there is nothing for me to "
        "transcribe. Send a voice message, or an audio file such as MP3, M4A, OGG, "
        "WAV or FLAC."
    )


def too_long(duration: float, limit: float) -> str:
    return (
        f"This recording lasts {duration / 3600:.1f} h; I transcribe at most "
        f"{limit / 3600:.1f} h. Split it into shorter parts."
    )


def failed(message: str) -> str:
    return f"Sorry, I could not transcribe this recording. {message}".strip()


def busy(retry_after: int) -> str:
    wait = (
        f"about {max(retry_after // 60, 1)} minute(s)"
        if retry_after >= 90
        else f"about {max(retry_after, 1)} seconds"
    )
    return (
        "Sorry, I have too many recordings to transcribe right now. Please send this "
        f"one again in {wait}."
    )


DOWNLOAD_FAILED = (
    "Sorry, I could not download this recording from Telegram. Please send it again."
)


def language_set(code: str | None) -> str:
    if code is None:
        return "I will detect the language of each recording."
    return f"I will transcribe your recordings as '{code}'."


def language_current(code: str, served: list[str] | None = None) -> str:
    current = f"'{code}'" if code else "detected for each recording"
    if served is not None:
        return (
            f"The language is {current}. I can transcribe {_listed(served)}: change "
            f"it with /lang <code>, for example /lang {served[0]}; /lang auto "
            "detects it."
        )
    return (
        f"The language is {current}. Change it with /lang <code>, for example "
        "/lang en or /lang de; /lang auto detects it."
    )


def language_unsupported(code: str, served: list[str]) -> str:
    return (
        f"I cannot transcribe '{code}' here: I can transcribe {_listed(served)}. "
        f"Send /lang {served[0]}, or /lang auto to detect the language."
    )


def _listed(codes: list[str]) -> str:
    if len(codes) > 12:
        return f"{len(codes)} languages ({', '.join(codes[:12])}, ...)"
    return ", ".join(codes)


def language_unknown(value: str) -> str:
    return (
        f"'{value}' is not a language code I know. Use an ISO 639-1 code such as "
        "en, de or fr, or /lang auto to detect the language."
    )
