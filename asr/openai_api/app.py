"""/v1/...: OpenAI's audio API as an ASGI application ahead of Django's handler.

``POST /v1/audio/transcriptions`` answers when its job has finished, and a job takes
seconds to hours. Through Django's handler each waiting request would hold one of
the process's few request threads (``WEB_MAX_CONCURRENT_REQUESTS``) and its database
connection: eight waiting clients would stop the web process. Here a request waits
on the event loop, where waiting costs a little memory: it subscribes to its job's
events on the channel layer (the group ``asr.realtime.jobs.job_group``, which the
worker publishes to once each change commits) and answers on the last one. Its
synchronous parts (``intake``: the token, the rate limits, parsing the upload and
making the job, reading the job) run on the request threads of Django's handler,
one short call at a time (``PooledThreadsASGIHandler.run_sync``), so however many
requests wait, the process has no more threads or database connections.

The channel layer is at-most-once, so the database has the last word: once
subscribed, the request reads the job (it may have finished already), and while no
event comes it asks again every ``OPENAI_RECHECK_SECONDS``. Past
``OPENAI_WAIT_SECONDS`` it answers 504 naming the job and its ``/api/v1`` link (with
``x-should-retry: false``: the official client would otherwise send the audio
again); the job goes on. A client that goes away stops the wait, not the job.

``stream=true`` answers Server-Sent Events: ``transcript.text.delta`` for each
segment as the job's progress events bring it, ``transcript.text.done`` at the end.

``kikipounamu/asgi.py`` routes ``/v1/`` here; the body-size limit
(``BodySizeLimitMiddleware``) refuses an oversized upload before it is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Awaitable
from collections.abc import Callable
from functools import partial
from typing import IO
from typing import Any
from typing import Protocol
from typing import TypeVar

from channels.layers import get_channel_layer
from django.conf import settings

from asr.openai_api import intake
from asr.openai_api import shapes
from asr.realtime.jobs import job_group
from kikipounamu.asgi_limits import ASGIApp
from kikipounamu.asgi_limits import BodySizeLimitMiddleware
from kikipounamu.asgi_limits import Receive
from kikipounamu.asgi_limits import Scope
from kikipounamu.asgi_limits import Send
from kikipounamu.errors import ApplicationError
from kikipounamu.logs import log_context

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RunSync(Protocol):
    """Runs a synchronous callable on a request thread (``run_sync`` of
    ``PooledThreadsASGIHandler``)."""

    def __call__(self, func: Callable[[], T], /) -> Awaitable[T]: ...


TRANSCRIPTIONS = "/v1/audio/transcriptions"
MODELS = "/v1/models"


class _ClientGone(Exception):
    pass


class OpenAIDoor:
    def __init__(self, run_sync: RunSync) -> None:
        self.run_sync = run_sync

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"].rstrip("/")
        method = scope["method"]
        if path == TRANSCRIPTIONS:
            if method != "POST":
                await _not_allowed(scope, receive, send, "POST")
                return
            await self._transcription(scope, receive, send)
        elif path == MODELS or path.startswith(MODELS + "/"):
            if method != "GET":
                await _not_allowed(scope, receive, send, "GET")
                return
            await self._models(scope, receive, send, path.removeprefix(MODELS)[1:])
        else:
            await _drain(scope, receive)
            await _refuse(
                send,
                ApplicationError(
                    f"Nothing is at {scope['path']}: this server has "
                    f"POST {TRANSCRIPTIONS} and GET {MODELS}.",
                    code="not_found",
                    status=404,
                ),
            )

    async def _models(
        self, scope: Scope, receive: Receive, send: Send, name: str
    ) -> None:
        await _drain(scope, receive)
        try:
            await self.run_sync(partial(intake.caller_check, scope=scope))
            if not name:
                body = shapes.model_list()
            elif name in shapes.served_models():
                body = shapes.model_object(name)
            else:
                raise ApplicationError(
                    f"The model {name!r} is not served here; GET {MODELS} lists them.",
                    code="model_not_found",
                    status=404,
                    extra={"param": "model"},
                )
        except ApplicationError as exc:
            await _refuse(send, exc)
            return
        except Exception:
            logger.exception("openai door: models failed")
            await _refuse(send, _server_error())
            return
        await _respond(send, 200, shapes.json_bytes(body), shapes.JSON)

    async def _transcription(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            # Before the body is read: a stranger's upload is not stored.
            caller = await self.run_sync(partial(intake.caller_check, scope=scope))
        except ApplicationError as exc:
            await _drain(scope, receive)
            await _refuse(send, exc)
            return
        except Exception:
            logger.exception("openai door: caller check failed")
            await _drain(scope, receive)
            await _refuse(send, _server_error())
            return
        body = await _read_body(receive)
        if body is None:
            return
        try:
            submitted = await self.run_sync(
                partial(
                    intake.transcription_submit,
                    scope=scope,
                    body_file=body,
                    caller=caller,
                )
            )
        except ApplicationError as exc:
            await _refuse(send, exc)
            return
        except Exception:
            logger.exception("openai door: submission failed")
            await _refuse(send, _server_error())
            return
        with log_context(job_id=submitted.job_id):
            # Once the body is read, the next message is the client going away.
            disconnected = asyncio.ensure_future(receive())
            try:
                if submitted.stream:
                    await self._stream(submitted, send, disconnected)
                else:
                    await self._answer(submitted, send, disconnected)
            finally:
                disconnected.cancel()

    async def _answer(
        self, submitted: intake.Submitted, send: Send, disconnected: asyncio.Future[Any]
    ) -> None:
        try:
            state = await self._follow(submitted, disconnected)
            if state["status"] != "succeeded":
                raise shapes.job_failure(state, job_url=submitted.job_url)
        except _ClientGone:
            return
        except ApplicationError as exc:
            await _refuse(send, exc)
            return
        except Exception:
            logger.exception("openai door: job %s: wait failed", submitted.job_id)
            await _refuse(send, _server_error(submitted))
            return
        content_type, body = shapes.transcription_answer(
            state,
            response_format=submitted.response_format,
            granularities=submitted.granularities,
            temperature=submitted.temperature,
        )
        await _respond(send, 200, body, content_type, _job_header(submitted))

    async def _stream(
        self, submitted: intake.Submitted, send: Send, disconnected: asyncio.Future[Any]
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", shapes.EVENT_STREAM.encode()),
                    (b"cache-control", b"no-cache"),
                    # Proxies (nginx) would hold the events back otherwise.
                    (b"x-accel-buffering", b"no"),
                    _job_header(submitted),
                ],
            }
        )
        deltas = shapes.TextDeltas()

        async def on_state(state: dict[str, Any]) -> None:
            for delta in deltas.new(state):
                await _send_part(send, shapes.delta_event(delta))

        async def on_idle() -> None:
            await _send_part(send, shapes.SSE_KEEPALIVE)

        try:
            state = await self._follow(submitted, disconnected, on_state, on_idle)
            if state["status"] != "succeeded":
                raise shapes.job_failure(state, job_url=submitted.job_url)
            await on_state(state)
            last = shapes.done_event(state)
        except _ClientGone:
            return
        except ApplicationError as exc:
            last = shapes.error_event(exc)
        except Exception:
            logger.exception("openai door: job %s: stream failed", submitted.job_id)
            last = shapes.error_event(_server_error(submitted))
        await send({"type": "http.response.body", "body": last, "more_body": False})

    async def _follow(
        self,
        submitted: intake.Submitted,
        disconnected: asyncio.Future[Any],
        on_state: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        on_idle: Callable[[], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Wait for the job to finish; its last state. ``on_state`` is given each
        state on the way (a stream's deltas), ``on_idle`` called when nothing came
        for a while. Raises ``ApplicationError`` (the job is gone, or the wait ran
        out) and ``_ClientGone``."""
        loop = asyncio.get_running_loop()
        job_id = submitted.job_id
        deadline = loop.time() + settings.OPENAI_WAIT_SECONDS
        async with _JobEvents(job_id, disconnected) as events:
            # Subscribed: from now on no change is missed but for the layer's
            # losses. What happened before is in the database.
            state = await self.run_sync(
                partial(intake.transcription_state, transcription_id=job_id)
            )
            while state["status"] not in intake.FINISHED:
                if on_state is not None:
                    await on_state(state)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    logger.warning(
                        "openai door: job %s not finished after %.0f s; answered "
                        "with its link",
                        job_id,
                        settings.OPENAI_WAIT_SECONDS,
                    )
                    raise shapes.job_pending(
                        job_id,
                        job_url=submitted.job_url,
                        waited=settings.OPENAI_WAIT_SECONDS,
                    )
                message = await events.next(
                    min(settings.OPENAI_RECHECK_SECONDS, remaining)
                )
                if message is None:
                    # Quiet: an event may have been lost on the way.
                    finished = await self.run_sync(
                        partial(intake.transcription_finished, transcription_id=job_id)
                    )
                    if finished is not None:
                        state = finished
                    elif on_idle is not None:
                        await on_idle()
                    continue
                pushed = message.get("job")
                # Progress keeps the job's sequence number; anything older than
                # what the database said is stale.
                if isinstance(pushed, dict) and int(pushed.get("seq") or 0) >= int(
                    state.get("seq") or 0
                ):
                    state = pushed
        return state


class _JobEvents:
    """One job's events from the channel layer, for one waiting request.

    A layer that cannot be reached leaves the request to ask the database alone.
    """

    def __init__(self, job_id: str, disconnected: asyncio.Future[Any]) -> None:
        self.group = job_group(job_id)
        self.disconnected = disconnected
        self.layer: Any = None
        self.channel = ""
        self.receiving: asyncio.Future[Any] | None = None

    async def __aenter__(self) -> _JobEvents:
        layer = get_channel_layer()
        try:
            self.channel = await layer.new_channel()
            await layer.group_add(self.group, self.channel)
        except Exception:
            logger.warning(
                "openai door: job events unavailable; asking the database instead",
                exc_info=True,
            )
            return self
        self.layer = layer
        self._receive()
        return self

    def _receive(self) -> None:
        # One receive for the wait, never cancelled on a timeout: the layer drops a
        # channel whose receive is cancelled.
        self.receiving = asyncio.ensure_future(self.layer.receive(self.channel))

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None after ``timeout`` seconds without one."""
        waiting: set[asyncio.Future[Any]] = {self.disconnected}
        if self.receiving is not None:
            waiting.add(self.receiving)
        done, _ = await asyncio.wait(
            waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if self.disconnected in done:
            raise _ClientGone
        received = self.receiving
        if received is None or received not in done:
            return None
        try:
            message = received.result()
        except Exception:
            logger.warning(
                "openai door: job events lost; asking the database instead",
                exc_info=True,
            )
            self.receiving = None
            return None
        self._receive()
        return message if isinstance(message, dict) else None

    async def __aexit__(self, *exc_info: object) -> None:
        if self.receiving is not None:
            self.receiving.cancel()
            # Its cancellation unsubscribes the channel.
            await asyncio.gather(self.receiving, return_exceptions=True)
        if self.layer is not None:
            with contextlib.suppress(Exception):
                await self.layer.group_discard(self.group, self.channel)


def _server_error(submitted: intake.Submitted | None = None) -> ApplicationError:
    extra = (
        {"job_id": submitted.job_id, "job_url": submitted.job_url} if submitted else {}
    )
    return ApplicationError(
        "Something went wrong on our side."
        + (f" The job {submitted.job_id} may still finish." if submitted else ""),
        code="server_error",
        status=500,
        extra=extra,
    )


def _job_header(submitted: intake.Submitted) -> tuple[bytes, bytes]:
    return (b"x-job-id", submitted.job_id.encode())


async def _respond(
    send: Send, status: int, body: bytes, content_type: str, *headers: tuple
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_part(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _refuse(send: Send, exc: ApplicationError) -> None:
    headers = []
    if exc.extra.get("retry_after") is not None:
        headers.append((b"retry-after", str(int(exc.extra["retry_after"])).encode()))
    if exc.extra.get("job_id"):
        # A job exists: sending the request again would make another.
        headers.append((b"x-should-retry", b"false"))
        headers.append((b"x-job-id", str(exc.extra["job_id"]).encode()))
    if exc.status_code == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await _respond(send, exc.status_code, shapes.error_body(exc), shapes.JSON, *headers)


async def _not_allowed(
    scope: Scope, receive: Receive, send: Send, allowed: str
) -> None:
    await _drain(scope, receive)
    await _refuse(
        send,
        ApplicationError(
            f"This address takes {allowed} only.",
            code="method_not_allowed",
            status=405,
        ),
    )


async def _drain(scope: Scope, receive: Receive) -> None:
    """Read the body and drop it: a client still sending would not see an answer
    sent before it has finished (the body-size limit still applies). A client that
    waits for "100 Continue" has sent none: answering at once tells it not to."""
    if any(
        name == b"expect" and value.lower() == b"100-continue"
        for name, value in scope.get("headers", [])
    ):
        return
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


async def _read_body(receive: Receive) -> IO[bytes] | None:
    """The body, in memory up to FILE_UPLOAD_MAX_MEMORY_SIZE and in a temporary file
    past it (as Django's handler keeps it), or None if the client went away."""
    body = tempfile.SpooledTemporaryFile(  # noqa: SIM115 (closed by its reader)
        max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, mode="w+b"
    )
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                body.close()
                return None
            body.write(message.get("body", b""))
            if not message.get("more_body"):
                break
    except BaseException:
        body.close()
        raise
    body.seek(0)
    return body


def openai_door(
    *, run_sync: RunSync, max_body_bytes: int, describe_limit: str
) -> ASGIApp:
    """The door, with its bodies limited (a 413 in OpenAI's error shape)."""
    return BodySizeLimitMiddleware(
        OpenAIDoor(run_sync),
        max_body_bytes=max_body_bytes,
        describe_limit=describe_limit,
        error_body=shapes.limit_error_body,
    )
