"""/v1/realtime?intent=transcription: OpenAI's realtime transcription events on the
live pipeline (asr.realtime.live), so that the official ``openai`` client's
``client.realtime.connect(extra_query={"intent": "transcription"})`` streams to it.

The session starts with the connection (``session.created``). The client sends
``session.update`` (GA: ``session.type`` "transcription" with ``audio.input``) or
``transcription_session.update`` (the beta shape), ``input_audio_buffer.append``
(base64 PCM16 at 24 kHz, ours to resample), ``.commit`` and ``.clear``. With
``server_vad`` turn detection (the default) our VAD cuts utterances; with none, only
commits do. Per utterance (an "item") the server sends ``speech_started``,
``speech_stopped`` and ``committed``, ``conversation.item.input_audio_transcription
.delta`` as the partial text grows, and ``.completed`` with the final. Deltas are
append-only, as the protocol has them: words go out once two partials in a row agree
on them (asr.realtime.stable_text), the final's rest as a last delta when it starts
with the words sent; ``.completed`` carries the final text whole. Bad input gets an
``error`` event and the session stays open, as OpenAI's does; closing the connection
ends the session (there is no resumption in this protocol).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any

from django.conf import settings

from asr import live_store
from asr.realtime.live import INVALID_PAYLOAD
from asr.realtime.live import TOO_BIG
from asr.realtime.live import UNSUPPORTED_DATA
from asr.realtime.live import LiveConsumer
from asr.realtime.live import LiveRefusal
from asr.realtime.live import StartOptions
from asr.realtime.live import start_options
from asr.realtime.stable_text import StablePrefix

RATE = 24_000
# OpenAI's VAD threshold (0-1, higher: louder speech needed) onto WebRTC's modes.
_THRESHOLD_MODES = ((0.35, 1), (0.6, 2), (1.01, 3))


def _event_id() -> str:
    return f"event_{uuid.uuid4().hex[:20]}"


class OpenAIRealtimeConsumer(LiveConsumer):
    protocol = "openai"
    resumable = False
    agrees_on_partials = True

    async def after_accept(self) -> None:
        query = self.scope.get("query_string", b"").decode("latin1")
        if "intent=transcription" not in query:
            raise LiveRefusal(
                UNSUPPORTED_DATA,
                "unsupported_intent",
                "This server does transcription only: connect with "
                "?intent=transcription.",
            )
        self.turn_detection = True
        self.stable: dict[int, StablePrefix] = {}
        self.cleared: set[int] = set()
        self.prompt = ""
        self.model = settings.ASR_ENGINE
        await self.on_start(start_options(sample_rate=RATE))

    def item_id(self, index: int) -> str:
        return f"item_{self.session_id.replace('-', '')[:16]}_{index}"

    # What the client sends --------------------------------------------------------------

    async def on_audio_before_start(self, data: bytes) -> None:
        await self.on_audio(data)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        if bytes_data is not None and not self.ended:
            await self.refuse(
                LiveRefusal(
                    UNSUPPORTED_DATA,
                    "binary_frame",
                    "Send JSON events; audio goes in input_audio_buffer.append as base64.",
                )
            )
            return
        await super().receive(text_data=text_data)

    def parse_start(self, content: dict[str, Any]) -> StartOptions:
        raise AssertionError("started at connect")  # pragma: no cover

    async def on_control(self, content: dict[str, Any]) -> None:
        kind = content.get("type")
        try:
            if kind == "input_audio_buffer.append":
                await self._append(content)
            elif kind == "input_audio_buffer.commit":
                if not await self.commit_utterance():
                    raise _ClientError(
                        "input_audio_buffer_commit_empty",
                        "The input audio buffer holds no speech to commit.",
                    )
            elif kind == "input_audio_buffer.clear":
                index = await self.clear_utterance()
                if index is not None:
                    self.cleared.add(index)
                await self.send_json({"type": "input_audio_buffer.cleared"})
            elif kind in ("session.update", "transcription_session.update"):
                await self._update(kind, content.get("session"))
            else:
                raise _ClientError(
                    "unknown_event",
                    f"Unknown or unsupported event type {str(kind)[:60]!r} on a "
                    "transcription session.",
                    param="type",
                )
        except _ClientError as error:
            await self.send_error(error.code, error.message, param=error.param)

    async def _append(self, content: dict[str, Any]) -> None:
        audio = content.get("audio")
        if not isinstance(audio, str):
            raise _ClientError(
                "invalid_value", "audio must be base64-encoded PCM16.", param="audio"
            )
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise _ClientError(
                "invalid_value", "audio is not valid base64.", param="audio"
            ) from None
        if not data:
            return
        try:
            await self.on_audio(data)
        except LiveRefusal as refusal:
            # Bad audio in one event (an odd byte count, too much at once): that
            # event is refused, the session goes on.
            if refusal.close_code in (INVALID_PAYLOAD, TOO_BIG):
                raise _ClientError(
                    refusal.code, refusal.message, param="audio"
                ) from None
            raise

    async def _update(self, kind: str, session: Any) -> None:
        if not isinstance(session, dict):
            raise _ClientError(
                "invalid_value", "session must be an object.", param="session"
            )
        if kind == "session.update" and session.get("type") not in (
            None,
            "transcription",
        ):
            raise _ClientError(
                "invalid_value",
                "This server does transcription sessions only "
                '(session.type "transcription").',
                param="session.type",
            )
        audio_input = (session.get("audio") or {}).get("input") or {}
        # The beta shape keeps these at the top of the session.
        audio_format = audio_input.get("format", session.get("input_audio_format"))
        transcription = audio_input.get(
            "transcription", session.get("input_audio_transcription")
        )
        has_turn = "turn_detection" in audio_input or "turn_detection" in session
        turn = audio_input.get("turn_detection", session.get("turn_detection"))
        if audio_format is not None:
            self._check_format(audio_format)
        if isinstance(transcription, dict):
            language = transcription.get("language")
            if language is not None:
                try:
                    options = start_options(sample_rate=RATE, language=language)
                    await self.check_language(options.language)
                except LiveRefusal as refusal:
                    raise _ClientError(
                        refusal.code, refusal.message, param="language"
                    ) from None
                self.options.language = options.language
                await live_store.session_set(
                    self.session_id, language=options.language or ""
                )
            if isinstance(transcription.get("prompt"), str):
                self.prompt = transcription["prompt"][:1000]
            if isinstance(transcription.get("model"), str):
                self.model = transcription["model"][:64]
        if has_turn:
            self._turn(turn)
        await self.send_json(
            {
                "type": "session.updated"
                if kind == "session.update"
                else "transcription_session.updated",
                "session": self._session(),
            }
        )

    def _check_format(self, audio_format: Any) -> None:
        if isinstance(audio_format, str):
            ok = audio_format == "pcm16"
        elif isinstance(audio_format, dict):
            ok = audio_format.get("type") in ("audio/pcm", "pcm16") and (
                audio_format.get("rate", RATE) == RATE
            )
        else:
            ok = False
        if not ok:
            raise _ClientError(
                "invalid_value",
                "Input audio is PCM16 at 24 kHz only (format audio/pcm, rate 24000).",
                param="audio.input.format",
            )

    def _turn(self, turn: Any) -> None:
        if turn is None:
            self.turn_detection = False
            # Utterances end at commits only: no pause is long enough.
            self.endpointer.tune(end_silence_ms=10**9)
            return
        if not isinstance(turn, dict) or turn.get("type") not in ("server_vad", None):
            raise _ClientError(
                "invalid_value",
                "turn_detection is server_vad or null here.",
                param="turn_detection.type",
            )
        self.turn_detection = True
        threshold = turn.get("threshold")
        mode = None
        if isinstance(threshold, int | float) and 0 <= threshold <= 1:
            mode = next(m for limit, m in _THRESHOLD_MODES if threshold < limit)
        silence = turn.get("silence_duration_ms")
        padding = turn.get("prefix_padding_ms")
        self.endpointer.tune(
            end_silence_ms=int(silence)
            if isinstance(silence, int) and 0 < silence <= 10_000
            else settings.LIVE_ENDPOINT_SILENCE_MS,
            pre_roll_ms=int(padding)
            if isinstance(padding, int) and 0 <= padding <= 2000
            else None,
            mode=mode,
        )

    def _session(self) -> dict[str, Any]:
        config = self.endpointer.config
        return {
            "type": "transcription",
            "id": f"sess_{self.session_id.replace('-', '')}",
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": RATE},
                    "transcription": {
                        "model": self.model,
                        "language": self.options.language,
                        "prompt": self.prompt,
                    },
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": {1: 0.3, 2: 0.5, 3: 0.8}.get(config.mode, 0.5),
                        "prefix_padding_ms": config.pre_roll_ms,
                        "silence_duration_ms": config.end_silence_ms,
                    }
                    if self.turn_detection
                    else None,
                }
            },
            # Where the stored session is (a job like any other).
            "kikipounamu_job": f"/api/v1/transcriptions/{self.session_id}",
        }

    # What the server sends --------------------------------------------------------------

    async def send_json(self, content: dict[str, Any]) -> None:
        await super().send_json({"event_id": _event_id(), **content})

    async def send_ready(self, *, resumed: bool) -> None:
        await self.send_json({"type": "session.created", "session": self._session()})

    async def send_speech_started(self, index: int, start: float) -> None:
        await self.send_json(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": round(start * 1000),
                "item_id": self.item_id(index),
            }
        )

    async def send_speech_stopped(self, index: int, end: float) -> None:
        if index in self.cleared:
            return
        item = self.item_id(index)
        await self.send_json(
            {
                "type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": round(end * 1000),
                "item_id": item,
            }
        )
        await self.send_json(
            {
                "type": "input_audio_buffer.committed",
                "item_id": item,
                "previous_item_id": self.item_id(index - 1) if index else None,
            }
        )

    async def send_partial(
        self, index: int, text: str, start: float, end: float
    ) -> None:
        delta = self.stable.setdefault(index, StablePrefix()).feed(text)
        if delta:
            await self._delta(index, delta)

    async def _delta(self, index: int, delta: str) -> None:
        await self.send_json(
            {
                "type": "conversation.item.input_audio_transcription.delta",
                "item_id": self.item_id(index),
                "content_index": 0,
                "delta": delta,
            }
        )

    async def send_final(self, final: dict[str, Any]) -> None:
        index = final["index"]
        if index in self.cleared:
            return
        item = self.item_id(index)
        if final.get("error"):
            await self.send_json(
                {
                    "type": "conversation.item.input_audio_transcription.failed",
                    "item_id": item,
                    "content_index": 0,
                    "error": {
                        "type": "transcription_error",
                        "code": final["error"]["code"],
                        "message": final["error"]["message"],
                        "param": None,
                    },
                }
            )
            return
        text = final["text"]
        stable = self.stable.pop(index, StablePrefix())
        rest = stable.rest(text)
        if rest:
            # The rest of the final as a last delta: the deltas add up to it.
            await self._delta(index, rest)
        await self.send_json(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item,
                "content_index": 0,
                "transcript": text,
                "usage": {
                    "type": "duration",
                    "seconds": round(final["end"] - final["start"], 3),
                },
            }
        )

    async def send_end(self, job: dict[str, Any]) -> None:
        """Nothing: the client ended the session by closing."""

    async def send_error(
        self, code: str, message: str, *, param: str | None = None
    ) -> None:
        await self.send_json(
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error"
                    if code not in ("busy", "workers_unavailable")
                    else "server_error",
                    "code": code,
                    "message": message,
                    "param": param,
                    "event_id": None,
                },
            }
        )


class _ClientError(Exception):
    """An event the session cannot take: an error event, and the session goes on."""

    def __init__(self, code: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
