"""Live dictation sockets: one connection streams one session's audio.

``LiveConsumer`` is the pipeline every live protocol shares; a protocol (ours at
/ws/live/, FunASR's, OpenAI's realtime) is a subclass that reads its own start and
control messages and writes its own replies (the ``parse_*`` and ``send_*`` hooks).

Per audio frame the consumer only converts, resamples to 16 kHz, runs the VAD
(asr.realtime.endpointing) and buffers; about every second, and before any
task is sent, the buffer is appended to the session's audio in Redis
(asr.live_store), where a live worker on any machine reads it. At decision points it
enqueues: while someone speaks, one partial at a time (``asr.live_partial``); when a
pause begins, the utterance as it would end there (``asr.live_prepare``); at the end
point, the utterance's final (``asr.live_final``), which takes the prepared text when
its audio is the same. Workers push results to the
session's group (asr.realtime.live_push); finals go to the client in index order,
each once, and a final that was pushed but never arrived (the channel layer is at
most once) is read from the database. After stop, once every final is in, the
session is finished (``asr.live_finish``) and the client told which job it is.

Nothing here waits on a worker: the consumer handles one message at a time
(Channels dispatches a connection's frames and pushes in turn), so the waiting is
done by a timer task (``_tick``) and the push handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import time
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from urllib.parse import parse_qs

import numpy as np
from asgiref.sync import sync_to_async
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from asr import live_store
from asr.languages import normalise_language
from asr.models import Transcription
from asr.ops import redis_state
from asr.realtime import endpointing
from asr.realtime.in_turn import dispatch_in_turn
from asr.realtime.jobs import job_payload
from asr.realtime.live_push import live_group
from asr.services import intake
from asr.services import live
from kikipounamu import json_input

logger = logging.getLogger(__name__)

RATE = endpointing.RATE

# Close codes. RFC 6455's where one fits; 4000-4999 are the application's, named
# after the HTTP status that means the same.
NORMAL = 1000
UNSUPPORTED_DATA = 1003  # a text frame where audio belongs, or audio before start
INVALID_PAYLOAD = 1007  # not JSON, or not whole PCM16 samples
TOO_BIG = 1009
TRY_AGAIN_LATER = 1013  # busy: the reason says when to retry
BAD_REQUEST = 4400  # a start message we cannot take
UNAUTHORIZED = 4401
NOT_FOUND = 4404
TIMEOUT = 4408  # no start message, or no audio for LIVE_IDLE_SECONDS
REPLACED = 4409  # a newer connection resumed this session

# The longest frame taken: two seconds at the highest rate.
MAX_FRAME_BYTES = 2 * 48_000 * 2
# Audio is appended to Redis once this much has gathered, or before any task that
# reads it is sent: workers read audio only at those points, and each append is a
# round trip (500 streams at 100 ms frames: 500 appends a second, not 5,000).
FLUSH_SAMPLES = RATE
# A final asked for but not pushed within this long is read from the database, and
# looked for again after twice as long each time, up to the most: while live workers
# are behind every final is late, and 500 streams each reading every 2 s took a
# third of the web's time (bench/live.py, py-spy), which made them later still. The
# same for a finished session's job.
FINAL_GRACE_SECONDS = 2.0
FINAL_GRACE_MAX_SECONDS = 8.0
# A partial not answered within this long is given up (its worker died).
PARTIAL_TIMEOUT_SECONDS = 10.0
# Partial messages older than this are dropped by the broker unrun: their text
# would be stale.
PARTIAL_EXPIRES_SECONDS = 10.0
# How often the timer runs.
TICK_SECONDS = 0.5
BUSY_RETRY_SECONDS = 10


# Sends on their way (a reference keeps each from being collected mid-flight).
_sending: set[asyncio.Future[Any]] = set()


def _longer(wait: float | None) -> float:
    """The wait before the next look for what was not pushed in time."""
    return min(2 * (wait or FINAL_GRACE_SECONDS), FINAL_GRACE_MAX_SECONDS)


class LiveRefusal(Exception):
    """What a client sent cannot be taken: close with ``close_code`` and tell it
    ``message`` (also the close reason, cut to what a close frame holds)."""

    def __init__(self, close_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.code = code
        self.message = message


@dataclass
class StartOptions:
    sample_rate: int = RATE
    language: str | None = None
    hotwords: str = ""
    name: str = ""
    # Resuming: the session's id, and the index of the last final the client has.
    resume: str | None = None
    last_final: int = -1
    extra: dict[str, Any] = field(default_factory=dict)


def start_options(
    *,
    sample_rate: Any,
    language: Any = None,
    hotwords: Any = "",
    name: Any = "",
    resume: Any = None,
    last_final: Any = -1,
) -> StartOptions:
    """Checked start options (every protocol's start message ends here)."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int):
        raise LiveRefusal(
            BAD_REQUEST, "invalid_sample_rate", "sample_rate must be an integer (Hz)."
        )
    if sample_rate not in endpointing.ACCEPTED_RATES:
        rates = ", ".join(str(r) for r in endpointing.ACCEPTED_RATES)
        raise LiveRefusal(
            BAD_REQUEST,
            "unsupported_sample_rate",
            f"Sample rate {sample_rate} Hz is not taken; send one of {rates}.",
        )
    if language is not None and not isinstance(language, str):
        raise LiveRefusal(BAD_REQUEST, "invalid_language", "language must be a string.")
    try:
        code = normalise_language(language)
    except ValueError:
        raise LiveRefusal(
            BAD_REQUEST,
            "unsupported_language",
            f"Unknown language {str(language)[:16]!r}: use a code such as 'en', or "
            "'auto'.",
        ) from None
    if not isinstance(hotwords, str) or len(hotwords) > 1000:
        raise LiveRefusal(
            BAD_REQUEST,
            "invalid_hotwords",
            "hotwords must be a string of at most 1000 characters.",
        )
    if resume is not None and not isinstance(resume, str):
        raise LiveRefusal(BAD_REQUEST, "invalid_session", "session must be a string.")
    if isinstance(last_final, bool) or not isinstance(last_final, int):
        raise LiveRefusal(
            BAD_REQUEST, "invalid_last_final", "last_final must be an integer."
        )
    return StartOptions(
        sample_rate=sample_rate,
        language=code,
        hotwords=hotwords,
        name=str(name or "")[:255],
        resume=resume,
        last_final=max(-1, last_final),
    )


def client_address(scope: dict[str, Any]) -> str:
    client = scope.get("client") or ("", 0)
    return str(client[0] or "")


def from_networks(address: str, networks: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in networks)


def _api_token_user(key: str) -> Any:
    from rest_framework.authtoken.models import Token

    token = Token.objects.select_related("user").filter(key=key).first()
    if token is None or not token.user.is_active:
        return None
    return token.user


class LiveConsumer(AsyncWebsocketConsumer):
    """The live pipeline of one connection; protocols override the hooks."""

    protocol = "native"
    # Whether a client may connect without a user: FunASR's clients send none.
    trusted_networks_allowed = False
    # Whether a dropped connection's session waits for its client to resume it
    # (LIVE_RESUME_SECONDS); a protocol without resumption ends it at once.
    resumable = True
    # The close reason a connection without a user gets.
    unauthorized_message = (
        "Sign in, or pass an API token: ?token=<key> or an "
        "'Authorization: Token <key>' header."
    )
    # Whether partials are asked for while someone speaks (a protocol, or a mode of
    # one, that shows only finals spares the live workers that work).
    wants_partials = True
    # Whether its text goes out only once two partials in a row agree on it
    # (asr.realtime.stable_text): then the first words wait for two partials, and
    # partials are asked for more often (LIVE_AGREED_PARTIAL_INTERVAL).
    agrees_on_partials = False

    # Messages --------------------------------------------------------------------------

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # AsyncConsumer.__call__ (channels 4.3, pinned <4.4) with dispatch_in_turn in
        # place of await_many_dispatch, which spent three or four turns of the event
        # loop on every audio frame (asr.realtime.in_turn says what that cost).
        # tests/asr/test_live_in_turn.py keeps this in step with Channels' setup.
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.channel_receive = functools.partial(
            self.channel_layer.receive, self.channel_name
        )
        self.base_send = send
        with contextlib.suppress(StopConsumer):
            await dispatch_in_turn([receive, self.channel_receive], self.dispatch)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels (4.3) awaits close_old_connections before every message, through
        # sync_to_async on the process's one thread-sensitive thread: every audio frame
        # of every stream, and every worker push, queued through that thread one after
        # another (bench/live.py's "livedispatch" what-if measured it). Frames and
        # pushes touch no database; what does here goes through database_sync_to_async,
        # which closes old connections around itself. Connect and disconnect keep
        # Channels' own path.
        kind = message["type"]
        if kind == "websocket.receive" or kind.startswith("live."):
            handler = getattr(self, get_handler_name(message), None)
            if handler is not None:
                await handler(message)
                return
        await super().dispatch(message)

    # Connection ---------------------------------------------------------------------

    async def connect(self) -> None:
        self.started = False
        self.ended = False
        self.gone = False
        self.stopping = False
        self.stopped_at = 0.0
        self.session_id = ""
        self._tick_task: asyncio.Task[None] | None = None
        self.opened_at = time.monotonic()
        user = await self._authenticate()
        await self.accept(self.choose_subprotocol(self.scope.get("subprotocols", [])))
        if user is None:
            await self.refuse(
                LiveRefusal(UNAUTHORIZED, "unauthorized", self.unauthorized_message)
            )
            return
        self.user = user
        busy = await self._busy()
        if busy is not None:
            await self.refuse(busy)
            return
        self._tick_task = asyncio.ensure_future(self._tick())
        try:
            await self.after_accept()
        except LiveRefusal as refusal:
            await self.refuse(refusal)

    async def after_accept(self) -> None:
        """A protocol whose session starts with the connection starts it here."""

    async def _authenticate(self) -> Any:
        """The user, an anonymous user from a trusted network (protocols that send
        no credentials), or None."""
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            return user
        query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        key = (query.get("token") or [""])[0]
        if not key:
            for name, value in self.scope.get("headers", []):
                if name == b"authorization":
                    scheme, _, rest = value.decode("latin1").partition(" ")
                    if scheme.lower() in ("token", "bearer"):
                        key = rest.strip()
        if key:
            found = await database_sync_to_async(_api_token_user)(key[:64])
            if found is not None:
                return found
            return None
        if self.trusted_networks_allowed and from_networks(
            client_address(self.scope), settings.LIVE_TRUSTED_NETWORKS
        ):
            return user  # AnonymousUser: the session has no owner
        return None

    async def _busy(self) -> LiveRefusal | None:
        active = await live_store.active_count(window=30)
        if active >= settings.LIVE_MAX_STREAMS:
            return LiveRefusal(
                TRY_AGAIN_LATER,
                "busy",
                f"busy: {active} live streams (the limit); retry in "
                f"{BUSY_RETRY_SECONDS} s",
            )
        depth = sum(
            (
                await sync_to_async(redis_state.queue_depths, thread_sensitive=False)(
                    ("live", "live_partial")
                )
            ).values()
        )
        if depth >= settings.LIVE_MAX_QUEUE_DEPTH:
            return LiveRefusal(
                TRY_AGAIN_LATER,
                "busy",
                f"busy: live workers are {depth} tasks behind; retry in "
                f"{BUSY_RETRY_SECONDS} s",
            )
        return None

    async def refuse(self, refusal: LiveRefusal) -> None:
        logger.info(
            "live %s %s: %s", self.protocol, self.session_id or "-", refusal.message
        )
        with contextlib.suppress(Exception):
            await self.send_refusal(refusal)
        await self.close(
            code=refusal.close_code,
            reason=refusal.message.encode()[:120].decode("utf-8", "ignore"),
        )
        self.ended = True

    async def send(
        self,
        text_data: str | None = None,
        bytes_data: bytes | None = None,
        close: bool = False,
    ) -> None:
        # After the client went away nothing can reach it; what disconnect() still
        # does (the open utterance's final, the delayed finish) must not stop at a
        # send that fails.
        if self.gone:
            return
        await super().send(text_data=text_data, bytes_data=bytes_data, close=close)

    async def disconnect(self, code: int) -> None:
        self.gone = True
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._tick_task
        if self.started:
            await self.channel_layer.group_discard(
                live_group(self.session_id), self.channel_name
            )
            # No longer streaming: out of the count of live streams.
            with contextlib.suppress(Exception):
                await live_store.active_remove(self.session_id)
            if not self.stopping and not self.resumable:
                # The protocol's way to end a session is to close the connection.
                with contextlib.suppress(Exception):
                    self.stopping = True
                    await self._end_stream()
                    await live_store.session_set(self.session_id, state="stopped")
                    await self._ask_finish()
            elif not self.stopping:
                # Gone mid-stream: its speech so far becomes a final, and the session
                # waits LIVE_RESUME_SECONDS for the client to come back with its id.
                with contextlib.suppress(Exception):
                    await self._end_stream()
                    if await live_store.detach_if_owner(
                        self.session_id, self.channel_name
                    ):
                        await self._enqueue(
                            "asr.live_finish",
                            [self.session_id],
                            countdown=settings.LIVE_RESUME_SECONDS,
                        )

    # Frames -------------------------------------------------------------------------

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        if self.ended:
            return
        try:
            if bytes_data is not None:
                if not self.started:
                    await self.on_audio_before_start(bytes_data)
                    return
                await self.on_audio(bytes_data)
                return
            try:
                content = json_input.loads(text_data or "")
            except json_input.JSONInputError as exc:
                raise LiveRefusal(INVALID_PAYLOAD, "invalid_json", str(exc)) from None
            if not isinstance(content, dict):
                raise LiveRefusal(
                    INVALID_PAYLOAD, "invalid_message", "A message is a JSON object."
                )
            if not self.started:
                await self.on_start(self.parse_start(content))
            else:
                await self.on_control(content)
        except LiveRefusal as refusal:
            await self.refuse(refusal)

    async def on_audio_before_start(self, data: bytes) -> None:
        raise LiveRefusal(
            UNSUPPORTED_DATA,
            "start_first",
            "Send the start message (JSON) before any audio.",
        )

    async def check_language(self, code: str | None) -> None:
        """Refuse a language no live worker serves (asr.services.intake's rule)."""
        unserved = await sync_to_async(
            intake.language_unserved, thread_sensitive=False
        )(code, queue="live")
        if unserved is not None:
            raise LiveRefusal(BAD_REQUEST, "unsupported_language", unserved)

    async def on_start(self, options: StartOptions) -> None:
        await self.check_language(options.language)
        self.options = options
        self.stopping = False
        self.finish_asked = False
        self.finish_asked_at = 0.0
        self.resampler = endpointing.Resampler(options.sample_rate)
        self.pending = bytearray()
        self.partial_in_flight: int | None = None
        self.partial_asked_at = 0.0
        self.partial_end = 0
        self.prepared: tuple[int, int] = (-1, -1)
        self.last_partial: tuple[int, int] = (-1, -1)
        self.finals_waiting: dict[int, dict[str, Any]] = {}
        self.ended_at: dict[int, float] = {}
        # How long to wait before the next look for each late final, and the finish.
        self.final_wait: dict[int, float] = {}
        self.finish_wait = FINAL_GRACE_SECONDS
        self.last_audio_at = time.monotonic()
        self.last_touch = 0.0
        self.next_index = 0
        self.next_final = 0
        if options.resume:
            resumed = await self._resume(options)
            if not resumed:
                return
        else:
            job = await database_sync_to_async(live.live_session_open)(
                owner=self.user,
                language=options.language,
                protocol=self.protocol,
                sample_rate=options.sample_rate,
                name=options.name,
            )
            self.session_id = str(job.pk)
            self.next_index = 0
            self.next_final = 0
            await live_store.session_create(
                self.session_id,
                {
                    "language": options.language or "",
                    "hotwords": options.hotwords,
                    "state": "streaming",
                    "conn": self.channel_name,
                },
            )
            self.endpointer = self._endpointer(0)
        await self.channel_layer.group_add(
            live_group(self.session_id), self.channel_name
        )
        await live_store.active_touch(self.session_id)
        self.started = True
        await self.send_ready(resumed=bool(options.resume))
        if options.resume:
            await self._catch_up()

    def _endpointer(self, offset: int) -> endpointing.Endpointer:
        return endpointing.Endpointer(
            endpointing.EndpointConfig(
                mode=settings.LIVE_VAD_MODE,
                end_silence_ms=settings.LIVE_ENDPOINT_SILENCE_MS,
                max_utterance_ms=int(settings.LIVE_MAX_UTTERANCE_SECONDS * 1000),
            ),
            offset=offset,
        )

    async def _resume(self, options: StartOptions) -> bool:
        job = await database_sync_to_async(live.live_session_for)(
            user=self.user, session_id=options.resume
        )
        if job is None:
            raise LiveRefusal(
                NOT_FOUND,
                "session_not_found",
                f"No live session {str(options.resume)[:40]} of yours.",
            )
        self.session_id = str(job.pk)
        self.next_final = options.last_final + 1
        state = await live_store.session_state(self.session_id)
        if job.status != Transcription.Status.RUNNING or not state:
            # Over: what the client missed, then the end.
            self.started = True
            self.stopping = True
            await self.send_ready(resumed=True)
            await self._catch_up()
            if job.status == Transcription.Status.RUNNING:
                await self._ask_finish()
            else:
                await self._finished(await database_sync_to_async(job_payload)(job))
            return False
        previous = state.get("conn")
        if previous and previous != self.channel_name:
            await self.channel_layer.send(previous, {"type": "live.replaced"})
        await live_store.session_set(
            self.session_id, state="streaming", conn=self.channel_name
        )
        self.next_index = int(state.get("next", 0))
        samples = await live_store.audio_samples(self.session_id)
        self.endpointer = self._endpointer(samples)
        return True

    async def on_control(self, content: dict[str, Any]) -> None:
        if self.parse_control(content) == "stop":
            await self.on_stop()

    async def on_audio(self, data: bytes) -> None:
        if self.stopping:
            return
        if len(data) % 2:
            raise LiveRefusal(
                INVALID_PAYLOAD,
                "invalid_audio",
                f"Audio frames are PCM16: whole 2-byte samples (got {len(data)} "
                "bytes).",
            )
        if len(data) > MAX_FRAME_BYTES:
            raise LiveRefusal(
                TOO_BIG,
                "frame_too_big",
                f"An audio frame holds at most {MAX_FRAME_BYTES} bytes (got "
                f"{len(data)}); send 20-200 ms at a time.",
            )
        self.last_audio_at = time.monotonic()
        samples = self.resampler.feed(np.frombuffer(data, dtype="<i2"))
        await self._take(samples)
        if self.endpointer.position >= settings.LIVE_MAX_SESSION_SECONDS * RATE:
            await self.send_error(
                "max_session_length",
                f"The session reached its maximum length "
                f"({settings.LIVE_MAX_SESSION_SECONDS:.0f} s of audio) and ends here.",
            )
            await self.on_stop()

    async def _take(self, samples: np.ndarray) -> None:
        if not samples.size:
            return
        self.pending += samples.astype("<i2", copy=False).tobytes()
        for event in self.endpointer.feed(samples):
            if isinstance(event, endpointing.Begin):
                await self._begin(event.start)
            else:
                await self._utterance_end(event)
        if len(self.pending) >= FLUSH_SAMPLES * 2:
            await self._flush()
        ep = self.endpointer
        likely_end = ep.likely_end()
        if likely_end is not None:
            if (
                settings.LIVE_PREPARE
                and self.prepared != (self.open_index, likely_end)
                and await self._workers_keep_up()
            ):
                await self._prepare(likely_end)
            return
        if (
            self.wants_partials
            and ep.in_speech
            and self.partial_in_flight is None
            and ep.position - max(self.partial_end, ep.speech_start)
            >= self._partial_interval
            and await self._workers_keep_up()
        ):
            await self._ask_partial()

    @functools.cached_property
    def _partial_interval(self) -> float:
        """Samples of new speech before the next partial is asked for."""
        if self.agrees_on_partials:
            return settings.LIVE_AGREED_PARTIAL_INTERVAL * RATE
        return settings.LIVE_PARTIAL_INTERVAL * RATE

    async def _workers_keep_up(self) -> bool:
        """Whether work that may be left undone (a partial, a prepare) is asked for.
        Live workers that fall behind get none until they catch up: finals go first
        anyway, a partial that waits is stale, and a prepare would only be a second
        final's worth of work in front of the final."""
        return await live_store.partial_backlog() < settings.LIVE_PARTIAL_BACKLOG

    async def _flush(self) -> None:
        if self.pending:
            data, self.pending = bytes(self.pending), bytearray()
            await live_store.audio_append(self.session_id, data)

    async def _begin(self, start: int) -> None:
        self.open_index = self.next_index
        self.next_index += 1
        self.partial_end = start
        await live_store.utterance_begin(self.session_id, self.open_index, start)
        await self.send_speech_started(self.open_index, start / RATE)

    async def _utterance_end(self, utterance: endpointing.Utterance) -> None:
        await self._flush()
        index = self.open_index
        await live_store.utterance_end(
            self.session_id, index, utterance.start, utterance.end
        )
        self.ended_at[index] = time.monotonic()
        await self._enqueue("asr.live_final", [self.session_id, index])
        await self.send_speech_stopped(index, utterance.end / RATE)

    async def _prepare(self, end: int) -> None:
        """A pause began: transcribe the utterance as it would end now, ahead of the
        end point (LIVE_ENDPOINT_SILENCE_MS later). If the pause lasts, the final
        finds that text ready; if speech resumes, it was a partial's worth of work.
        This takes most of a final's compute off its latency."""
        await self._flush()
        self.prepared = (self.open_index, end)
        await self._enqueue(
            "asr.live_prepare",
            [self.session_id, self.open_index, self.endpointer.speech_start, end],
            expires=PARTIAL_EXPIRES_SECONDS,
        )

    async def commit_utterance(self) -> bool:
        """End the open utterance now (a client's commit); False if none is open."""
        utterance = self.endpointer.cut("commit")
        if utterance is None:
            return False
        await self._utterance_end(utterance)
        return True

    async def clear_utterance(self) -> int | None:
        """Drop the open utterance (a client's clear): its final will be empty.
        Its index, or None if none was open."""
        utterance = self.endpointer.discard()
        if utterance is None:
            return None
        index = self.open_index
        await self._utterance_end(utterance)
        return index

    async def _ask_partial(self) -> None:
        await self._flush()
        ep = self.endpointer
        self.partial_in_flight = self.open_index
        self.partial_asked_at = time.monotonic()
        self.partial_end = ep.position
        await self._enqueue(
            "asr.live_partial",
            [self.session_id, self.open_index, ep.position],
            expires=PARTIAL_EXPIRES_SECONDS,
        )

    async def _enqueue(self, name: str, args: list[Any], **options: Any) -> None:
        """Send a task without waiting for it: Celery's publish is a blocking Redis
        round trip on a thread, and a stream whose frames waited for it fell behind
        its audio when hundreds did it at once (bench/live.py, 500 streams). The
        audio the task reads is in Redis already (flushed before every send);
        a send that fails is logged, and the finals it would have made are made
        by the finish."""
        send = asyncio.ensure_future(
            sync_to_async(live.live_enqueue, thread_sensitive=False)(
                name, args, what=f"live session {self.session_id}", **options
            )
        )
        _sending.add(send)
        send.add_done_callback(_sending.discard)

    async def _end_stream(self) -> None:
        """No more audio: what the resampler holds, the open utterance, all flushed."""
        await self._take(self.resampler.flush())
        last = self.endpointer.finish()
        if last is not None:
            await self._utterance_end(last)
        await self._flush()

    async def on_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stopped_at = time.monotonic()
        await self._end_stream()
        await live_store.session_set(self.session_id, state="stopped")
        await self._maybe_finish()

    # Pushes from workers --------------------------------------------------------------

    async def live_partial(self, message: dict[str, Any]) -> None:
        index = message["utterance"]
        if self.partial_in_flight == index:
            self.partial_in_flight = None
        result = message.get("result")
        # Still shown after its utterance ended, until the final replaces it: the
        # text comes sooner. Never after the final.
        if not result or index < self.next_final:
            return
        # A partial covering less than one already shown is older: dropped.
        end = round(result["end"] * RATE)
        if (index, end) <= self.last_partial:
            return
        self.last_partial = (index, end)
        await self.send_partial(index, result["text"], result["start"], result["end"])

    async def live_final(self, message: dict[str, Any]) -> None:
        await self._deliver([message["final"]])

    async def live_finished(self, message: dict[str, Any]) -> None:
        if self.stopping and not self.ended:
            await self._finished(message["job"])

    async def live_replaced(self, message: dict[str, Any]) -> None:
        self.stopping = True  # the newer connection streams it now
        await self.refuse(
            LiveRefusal(
                REPLACED, "replaced", "A newer connection resumed this session."
            )
        )

    async def _deliver(self, finals: list[dict[str, Any]]) -> None:
        """Finals to the client in index order, each once."""
        for final in finals:
            if final["index"] >= self.next_final:
                self.finals_waiting[final["index"]] = final
        while self.next_final in self.finals_waiting:
            final = self.finals_waiting.pop(self.next_final)
            self.ended_at.pop(self.next_final, None)
            self.final_wait.pop(self.next_final, None)
            self.next_final += 1
            await self.send_final(final)
        await self._maybe_finish()

    async def _catch_up(self) -> None:
        finals = await database_sync_to_async(live.live_finals_after)(
            session_id=self.session_id, after=self.next_final - 1
        )
        await self._deliver(finals)

    async def _maybe_finish(self) -> None:
        if (
            self.stopping
            and not self.finish_asked
            and not self.ended
            and self.next_final >= self.next_index
        ):
            await self._ask_finish()

    async def _ask_finish(self) -> None:
        self.finish_asked = True
        self.finish_asked_at = time.monotonic()
        await self._enqueue("asr.live_finish", [self.session_id])

    async def _finished(self, job: dict[str, Any]) -> None:
        self.ended = True
        await live_store.active_remove(self.session_id)
        await self.send_end(job)
        await self.close(code=NORMAL)

    # The timer --------------------------------------------------------------------------

    async def _tick(self) -> None:
        try:
            while not self.ended:
                await asyncio.sleep(TICK_SECONDS)
                await self._on_tick(time.monotonic())
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("live %s: timer failed", self.session_id or "-")

    async def _on_tick(self, now: float) -> None:
        if not self.started:
            if now - self.opened_at > settings.LIVE_START_TIMEOUT:
                await self.refuse(
                    LiveRefusal(
                        TIMEOUT,
                        "start_timeout",
                        f"No start message within {settings.LIVE_START_TIMEOUT:.0f} s.",
                    )
                )
            return
        if self.ended:
            return
        if not self.stopping and now - self.last_audio_at > settings.LIVE_IDLE_SECONDS:
            await self.send_error(
                "idle",
                f"No audio for {settings.LIVE_IDLE_SECONDS:.0f} s: the session ends.",
            )
            await self.on_stop()
        if (
            self.partial_in_flight is not None
            and now - self.partial_asked_at > PARTIAL_TIMEOUT_SECONDS
        ):
            self.partial_in_flight = None
        late = [
            i
            for i, at in self.ended_at.items()
            if now - at > self.final_wait.get(i, FINAL_GRACE_SECONDS)
        ]
        if late and min(late) == self.next_final:
            for index in late:
                self.ended_at[index] = now
                self.final_wait[index] = _longer(self.final_wait.get(index))
            await self._catch_up()
        if self.finish_asked and now - self.finish_asked_at > self.finish_wait:
            self.finish_asked_at = now
            self.finish_wait = _longer(self.finish_wait)
            job = await database_sync_to_async(
                Transcription.objects.filter(pk=self.session_id).first
            )()
            if job is not None and job.is_finished:
                await self._catch_up()
                await self._finished(await database_sync_to_async(job_payload)(job))
        if (
            self.stopping
            and self.stopped_at
            and now - self.stopped_at > settings.LIVE_FINISH_TIMEOUT
        ):
            # No live worker answers. The session is kept (its audio in Redis, the
            # finals made so far), and its finish waits in the queue behind its
            # finals for the first live worker that comes.
            await live_store.session_set(
                self.session_id, state="detached", detached_at=str(time.time())
            )
            if not self.finish_asked:
                await self._ask_finish()
            await self.refuse(
                LiveRefusal(
                    TRY_AGAIN_LATER,
                    "workers_unavailable",
                    f"No live worker finished this session within "
                    f"{settings.LIVE_FINISH_TIMEOUT:.0f} s; it is kept and will be "
                    f"finished when one does (job {self.session_id}).",
                )
            )
            return
        if now - self.last_touch > 5 and not self.stopping:
            self.last_touch = now
            await live_store.session_renew(self.session_id)
        await self.on_tick(now)

    # Protocol hooks: what the native protocol says (FunASR's and OpenAI's override) --

    def parse_start(self, content: dict[str, Any]) -> StartOptions:
        raise NotImplementedError

    def parse_control(self, content: dict[str, Any]) -> str | None:
        raise NotImplementedError

    async def on_tick(self, now: float) -> None:
        """Per tick, for a protocol's own timers (heartbeats)."""

    def choose_subprotocol(self, offered: list[str]) -> str | None:
        """The subprotocol to accept among those the client offered (none here)."""
        return None

    async def send_refusal(self, refusal: LiveRefusal) -> None:
        """What the client is told before a refusal's close frame (whose code and
        reason say it too): an error message here."""
        await self.send_error(refusal.code, refusal.message)

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content, ensure_ascii=False))

    async def send_ready(self, *, resumed: bool) -> None: ...

    async def send_speech_started(self, index: int, start: float) -> None: ...

    async def send_speech_stopped(self, index: int, end: float) -> None: ...

    async def send_partial(
        self, index: int, text: str, start: float, end: float
    ) -> None: ...

    async def send_final(self, final: dict[str, Any]) -> None: ...

    async def send_end(self, job: dict[str, Any]) -> None: ...

    async def send_error(self, code: str, message: str) -> None: ...


class NativeLiveConsumer(LiveConsumer):
    """/ws/live/: this project's protocol (the README's "Live dictation").

    Client: ``{"type": "start", "sample_rate": 16000, "language": "en" | "auto",
    "hotwords": "...", "session": "<id>", "last_final": 3}`` (the last two to
    resume), then binary PCM16 mono frames, then ``{"type": "stop"}``.
    Server: ready, speech_started, speech_stopped, partial, final, end, error,
    heartbeat.
    """

    protocol = "native"

    def parse_start(self, content: dict[str, Any]) -> StartOptions:
        if content.get("type") != "start":
            raise LiveRefusal(
                BAD_REQUEST,
                "start_expected",
                'The first message is {"type": "start", "sample_rate": 16000}.',
            )
        return start_options(
            sample_rate=content.get("sample_rate", RATE),
            language=content.get("language"),
            hotwords=content.get("hotwords", ""),
            name=content.get("name", ""),
            resume=content.get("session"),
            last_final=content.get("last_final", -1),
        )

    def parse_control(self, content: dict[str, Any]) -> str | None:
        kind = content.get("type")
        if kind == "stop":
            return "stop"
        if kind == "ping":
            return None
        raise LiveRefusal(
            UNSUPPORTED_DATA,
            "unexpected_message",
            'After start, send binary PCM16 audio frames and {"type": "stop"}.',
        )

    async def on_tick(self, now: float) -> None:
        last = getattr(self, "_heartbeat_at", self.opened_at)
        if now - last >= settings.WS_HEARTBEAT_SECONDS:
            self._heartbeat_at = now
            await self.send_json({"type": "heartbeat"})

    async def send_ready(self, *, resumed: bool) -> None:
        await self.send_json(
            {
                "type": "ready",
                "session": self.session_id,
                "resumed": resumed,
                "sample_rate": self.options.sample_rate,
                "position": round(
                    getattr(getattr(self, "endpointer", None), "position", 0) / RATE, 3
                ),
                "next_final": self.next_final,
                "limits": {
                    "max_session_seconds": settings.LIVE_MAX_SESSION_SECONDS,
                    "idle_seconds": settings.LIVE_IDLE_SECONDS,
                    "max_utterance_seconds": settings.LIVE_MAX_UTTERANCE_SECONDS,
                },
            }
        )

    async def send_speech_started(self, index: int, start: float) -> None:
        await self.send_json(
            {"type": "speech_started", "utterance": index, "start": round(start, 3)}
        )

    async def send_speech_stopped(self, index: int, end: float) -> None:
        await self.send_json(
            {"type": "speech_stopped", "utterance": index, "end": round(end, 3)}
        )

    async def send_partial(
        self, index: int, text: str, start: float, end: float
    ) -> None:
        await self.send_json(
            {
                "type": "partial",
                "utterance": index,
                "text": text,
                "start": start,
                "end": end,
            }
        )

    async def send_final(self, final: dict[str, Any]) -> None:
        await self.send_json({"type": "final", **final})

    async def send_end(self, job: dict[str, Any]) -> None:
        await self.send_json(
            {
                "type": "end",
                "session": self.session_id,
                "finals": self.next_final,
                "job": job,
            }
        )

    async def send_error(self, code: str, message: str) -> None:
        await self.send_json({"type": "error", "code": code, "message": message})
