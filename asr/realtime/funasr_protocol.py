"""FunASR's WebSocket protocol on the live pipeline (the README's "FunASR's
WebSocket clients"): the clients of FunASR's runtime server stream to this project
unchanged, at the WebSocket root (``ws://host:port``, where they connect) or at
/ws/funasr/.

Client: a JSON first message (``mode`` online | offline | 2pass, ``wav_name``,
``wav_format``, ``audio_fs``, ``chunk_size``, ``chunk_interval``, ``hotwords``,
``itn``, ``svs_lang``, ``is_speaking``), binary PCM16 frames, then
``{"is_speaking": false}``. Further JSON messages mid-stream are taken: any with
``is_speaking`` false ends the stream, the rest change nothing.

Server: ``{"mode", "wav_name", "text", "is_final"[, "timestamp"]}`` messages, and
after the stop, once every final is in, the ``is_end`` acknowledgement; then the
socket closes (1000). ``is_final`` is true on the acknowledgement only: FunASR's
clients read until a message with it (its C++ runtime sets it on the last result
after the stop), so every result comes before it and a client that waits for
``is_end`` gets it too. What FunASR means by each mode, and what is sent for it:

- ``2pass-online`` / ``online``: pieces of the utterance being spoken that the client
  appends. Our partials are re-transcriptions of the whole utterance so far and may
  revise earlier words, while a piece once sent cannot be taken back. So a word is
  sent once two partials in a row agree on it and on all before it
  (asr.realtime.stable_text, as OpenAI's deltas are); a partial that revises sent
  words sends nothing, and the final settles it. Pieces go out only for the first utterance without a
  final, so a client's text is in spoken order.
- ``2pass-offline`` / ``offline``: the utterance's final, whole: a 2pass client
  replaces the utterance's online pieces with it. ``timestamp`` holds its words'
  (or segments') [start, end] in ms from the stream's start, as FunASR writes
  them: a JSON string, ``"[[100,200],[200,500]]"``.
- In ``online`` mode the final is sent as the rest of the utterance after the
  pieces already sent (if the pieces were revised, the final's words past as many
  words as were sent).

An utterance's text starts with a space when an earlier one had text and it is in
a script written with spaces: FunASR's clients join texts as they come.
``offline`` asks for no partials at all. Heartbeats are not sent (FunASR's clients
would print them); the server's WebSocket pings keep the connection alive.
"""

from __future__ import annotations

import io
import json
import unicodedata
import wave
from typing import Any

from asr.realtime import endpointing
from asr.realtime.live import BAD_REQUEST
from asr.realtime.live import RATE
from asr.realtime.live import LiveConsumer
from asr.realtime.live import LiveRefusal
from asr.realtime.live import StartOptions
from asr.realtime.live import start_options
from asr.realtime.stable_text import StablePrefix
from kikipounamu import json_input

MODES = ("online", "offline", "2pass")
# A WAV header (wav_format "wav") longer than this is not one.
MAX_WAV_HEADER = 64 * 1024


class FunasrLiveConsumer(LiveConsumer):
    """FunASR's runtime protocol (see the module's docstring)."""

    protocol = "funasr"
    trusted_networks_allowed = True
    agrees_on_partials = True
    unauthorized_message = (
        "Not from LIVE_TRUSTED_NETWORKS: add an API token to the URL, "
        "ws://host:port/?token=<key>."
    )

    mode = "2pass"
    wav_name = "microphone"

    def choose_subprotocol(self, offered: list[str]) -> str | None:
        # FunASR's clients ask for "binary", and its server agrees.
        return "binary" if "binary" in offered else None

    def parse_start(self, content: dict[str, Any]) -> StartOptions:
        mode = content.get("mode") or "2pass"
        if mode not in MODES:
            raise LiveRefusal(
                BAD_REQUEST,
                "unsupported_mode",
                f"mode {str(mode)[:20]!r} is not one of online, offline, 2pass.",
            )
        wav_format = content.get("wav_format") or "pcm"
        if not isinstance(wav_format, str) or wav_format.lower() not in ("pcm", "wav"):
            raise LiveRefusal(
                BAD_REQUEST,
                "unsupported_format",
                f"wav_format {str(wav_format)[:20]!r} is not taken: send PCM16 "
                "(pcm, or wav with its header).",
            )
        _check_chunking(content)
        for flag in ("itn", "is_speaking", "svs_itn"):
            if not isinstance(content.get(flag, True), bool | int):
                raise LiveRefusal(
                    BAD_REQUEST, f"invalid_{flag}", f"{flag} must be true or false."
                )
        wav_name = content.get("wav_name") or "microphone"
        options = start_options(
            sample_rate=_sample_rate(content.get("audio_fs", RATE)),
            language=content.get("svs_lang"),
            hotwords=_hotwords(content.get("hotwords")),
            name=wav_name,
        )
        options.extra = {
            "mode": mode,
            "wav_name": str(wav_name)[:255],
            "wav": wav_format.lower() == "wav",
            "speaking": content.get("is_speaking", True) not in (False, 0),
        }
        return options

    def parse_control(self, content: dict[str, Any]) -> str | None:
        # Clients repeat settings mid-stream, and some mark each utterance with
        # is_speaking true ... false: the first false ends the stream.
        return "stop" if content.get("is_speaking", True) in (False, 0) else None

    async def on_start(self, options: StartOptions) -> None:
        self.mode = options.extra["mode"]
        self.wav_name = options.extra["wav_name"]
        self.wav_head: bytearray | None = bytearray() if options.extra["wav"] else None
        self.wants_partials = self.mode != "offline"
        # Per utterance, the online text sent for it so far.
        self.online: dict[int, StablePrefix] = {}
        # Whether an earlier utterance's final had text (the next one is joined
        # to it with a space).
        self.text_sent = False
        self.errors: list[str] = []
        await super().on_start(options)
        if self.started and not options.extra["speaking"]:
            await self.on_stop()

    async def on_audio(self, data: bytes) -> None:
        if self.wav_head is not None:
            data = self._past_wav_header(data)
            if not data:
                return
        await super().on_audio(data)

    def _past_wav_header(self, data: bytes) -> bytes:
        """The samples in ``data`` once the WAV header is past ("wav" streams)."""
        assert self.wav_head is not None
        self.wav_head += data
        head = bytes(self.wav_head)
        if len(head) >= 4 and head[:4] != b"RIFF":
            self.wav_head = None  # no header after all: PCM
            return head
        found = wav_data_start(head)
        if found is None:
            if len(head) > MAX_WAV_HEADER:
                raise LiveRefusal(
                    BAD_REQUEST,
                    "invalid_wav",
                    f"No WAV data chunk within {MAX_WAV_HEADER} bytes.",
                )
            return b""
        rate, offset = found
        self.wav_head = None
        if rate not in endpointing.ACCEPTED_RATES:
            rates = ", ".join(str(r) for r in endpointing.ACCEPTED_RATES)
            raise LiveRefusal(
                BAD_REQUEST,
                "unsupported_sample_rate",
                f"The WAV is at {rate} Hz; send one of {rates}.",
            )
        if rate != self.options.sample_rate:
            # The header knows the rate better than audio_fs (often left out).
            self.options.sample_rate = rate
            self.resampler = endpointing.Resampler(rate)
        return head[offset:]

    # Replies ---------------------------------------------------------------------

    async def _reply(
        self, mode: str, text: str, *, is_final: bool, **more: Any
    ) -> None:
        await self.send_json(
            {
                "mode": mode,
                "wav_name": self.wav_name,
                "text": text,
                "is_final": is_final,
                **more,
            }
        )

    def _lead(self, text: str) -> str:
        return " " if self.text_sent and _spaced(text) else ""

    async def send_partial(
        self, index: int, text: str, start: float, end: float
    ) -> None:
        if self.mode == "offline" or index != self.next_final:
            return
        stable = self.online.setdefault(index, StablePrefix())
        first = not stable.sent
        piece = stable.feed(text)
        if not piece:
            return
        await self._reply(
            "2pass-online" if self.mode == "2pass" else "online",
            self._lead(piece) + piece if first else piece,
            is_final=False,
        )

    async def send_final(self, final: dict[str, Any]) -> None:
        index = final["index"]
        text = (final.get("text") or "").strip()
        stable = self.online.pop(index, StablePrefix())
        if self.mode == "online":
            rest = stable.rest(text)
            if rest is None:
                rest = stable.rest_after_revision(text)
            if rest:
                piece = rest if stable.sent else self._lead(rest) + rest
                await self._reply("online", piece, is_final=False)
        elif text:
            stamps = funasr_timestamp(final.get("segments") or [])
            await self._reply(
                "2pass-offline" if self.mode == "2pass" else "offline",
                self._lead(text) + text,
                is_final=False,
                **({"timestamp": stamps} if stamps != "[]" else {}),
            )
        self.text_sent = self.text_sent or bool(text)

    async def send_end(self, job: dict[str, Any]) -> None:
        ack: dict[str, Any] = {
            "mode": self.mode,
            "wav_name": self.wav_name,
            "text": "",
            "is_final": True,
            "is_end": True,
            # Not FunASR's: the job the session is stored as.
            "session": self.session_id,
        }
        if self.errors:
            ack["error"] = "; ".join(self.errors)
        await self.send_json(ack)

    async def send_error(self, code: str, message: str) -> None:
        # Why a session ended early (idle, its length limit): FunASR's server tells
        # that in its end acknowledgement, not as a message clients would print.
        self.errors.append(message)

    async def send_refusal(self, refusal: LiveRefusal) -> None:
        """Nothing: the close frame's code and reason say it (FunASR's clients
        have no error message to read)."""


def _check_chunking(content: dict[str, Any]) -> None:
    """chunk_size and chunk_interval tune FunASR's streaming model; here the VAD
    cuts the stream, so they are only checked."""
    size = content.get("chunk_size", [5, 10, 5])
    if isinstance(size, str):
        size = [part.strip() for part in size.split(",")]
        size = [int(part) if part.isdigit() else part for part in size]
    if not (
        isinstance(size, list)
        and len(size) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) for n in size)
    ):
        raise LiveRefusal(
            BAD_REQUEST,
            "invalid_chunk_size",
            "chunk_size is three integers, such as [5, 10, 5].",
        )
    interval = content.get("chunk_interval", 10)
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise LiveRefusal(
            BAD_REQUEST,
            "invalid_chunk_interval",
            "chunk_interval is a positive integer.",
        )


def _sample_rate(value: Any) -> Any:
    # FunASR's server reads audio_fs with int(): "16000" is taken too.
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def _hotwords(value: Any) -> str:
    """FunASR's hot words (a JSON object of word: weight, as a string or not, or
    words in plain text) as the engine's hot-word text; weights are not used."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            parsed = json_input.loads(value)
        except json_input.JSONInputError:
            parsed = None
        if not isinstance(parsed, dict):
            return " ".join(value.split())
        value = parsed
    if isinstance(value, dict):
        return ", ".join(str(word) for word in value)
    raise LiveRefusal(
        BAD_REQUEST,
        "invalid_hotwords",
        'hotwords is a string: words, or JSON such as {"word": 20}.',
    )


def _spaced(text: str) -> bool:
    """Whether ``text`` starts in a script written with spaces between words."""
    return bool(text) and unicodedata.east_asian_width(text[0]) not in ("W", "F")


def funasr_timestamp(segments: list[dict[str, Any]]) -> str:
    """[start, end] in ms of each word (each segment, when it has no words), as
    FunASR's ``timestamp`` string: ``"[[100,200],[200,500]]"``."""
    pairs = [
        [round(item["start"] * 1000), round(item["end"] * 1000)]
        for segment in segments
        for item in (segment.get("words") or [segment])
    ]
    return json.dumps(pairs, separators=(",", ":"))


def wav_data_start(head: bytes) -> tuple[int, int] | None:
    """(sample rate, offset of the first sample) of a WAV header at the start of
    ``head``; None while the header is not all there. PCM16 mono only."""
    # The chunks up to the data chunk's header: wave reads a header only from a
    # stream it can read to the end, so where it ends is found first.
    offset = 12
    while True:
        if len(head) < offset + 8:
            return None
        if head[offset : offset + 4] == b"data":
            offset += 8
            break
        size = int.from_bytes(head[offset + 4 : offset + 8], "little")
        offset += 8 + size + (size & 1)
    try:
        with wave.open(io.BytesIO(head[:offset]), "rb") as wav:
            channels, width, rate = (
                wav.getnchannels(),
                wav.getsampwidth(),
                wav.getframerate(),
            )
    except (EOFError, wave.Error) as exc:
        raise LiveRefusal(
            BAD_REQUEST, "invalid_wav", f"Not a PCM WAV header ({exc})."[:110]
        ) from None
    if channels != 1 or width != 2:
        raise LiveRefusal(
            BAD_REQUEST,
            "unsupported_wav",
            f"The WAV is {channels} channel(s) of {width * 8}-bit samples: send "
            "16-bit mono.",
        )
    return rate, offset
