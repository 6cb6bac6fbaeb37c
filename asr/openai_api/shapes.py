"""What the OpenAI-compatible door answers, in the shapes of OpenAI's audio API as the
official ``openai`` package's types define them (``Transcription``,
``TranscriptionVerbose``, ``TranscriptionTextDeltaEvent``, ``TranscriptionTextDoneEvent``,
``Model``) and its error body ``{"error": {"message", "type", "param", "code"}}``.

Everything here works on a job's *state*: the few fields of a job that an answer needs,
as ``intake.transcription_state`` reads them from the database and as the job's
pushed events carry them (``asr.realtime.jobs.job_payload``), so either can end a wait.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings

from asr import audio as audio_lib
from asr import formats
from kikipounamu.errors import ApplicationError

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("word", "segment")
# The name OpenAI's clients send by default: this deployment's engine.
ALIAS = "whisper-1"

JSON = "application/json"
_TEXT_TYPES = {
    "text": formats.FORMATS["txt"],
    "srt": formats.FORMATS["srt"],
    "vtt": formats.FORMATS["vtt"],
}
EVENT_STREAM = "text/event-stream; charset=utf-8"

# The error "type" OpenAI sends with each status; the official client picks its
# exception class by status alone (400 BadRequestError, 401 AuthenticationError, 404
# NotFoundError, 409 ConflictError, 422 UnprocessableEntityError, 429 RateLimitError,
# 5xx InternalServerError, any other APIStatusError).
_TYPES = {401: "invalid_request_error", 429: "rate_limit_error"}
# Our codes where OpenAI's clients know another one.
_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}

# Failures of a job that the audio (or the request) caused; the others are ours.
_INPUT_FAILURES = {
    audio_lib.UNSUPPORTED_FORMAT: 415,
    audio_lib.TOO_LARGE: 413,
    audio_lib.NO_AUDIO_STREAM: 400,
    audio_lib.CORRUPT_AUDIO: 400,
    audio_lib.EMPTY_AUDIO: 400,
    audio_lib.TOO_LONG: 400,
    audio_lib.DECODE_TIMEOUT: 400,
    "unsupported_language": 400,
}


# Errors -------------------------------------------------------------------------------


def error_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return _TYPES.get(status, "invalid_request_error")


def error_body(exc: ApplicationError) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}``; the job's id and link,
    where the request made one, ride along."""
    status = exc.status_code
    error: dict[str, Any] = {
        "message": exc.message,
        "type": error_type(status),
        "param": exc.extra.get("param"),
        "code": _CODES.get(status, exc.code),
    }
    for name in ("job_id", "job_url"):
        if exc.extra.get(name):
            error[name] = exc.extra[name]
    return json.dumps({"error": error}).encode()


def limit_error_body(code: str, message: str) -> bytes:
    """A refusal of the body-size limit (``BodySizeLimitMiddleware``), in this shape."""
    return error_body(ApplicationError(message, code=code, status=400))


def job_failure(state: dict[str, Any], *, job_url: str) -> ApplicationError:
    """What a client is told of a job that did not succeed."""
    job_id = state["id"]
    if state["status"] == "cancelled":
        return ApplicationError(
            f"Transcription job {job_id} was cancelled before it finished.",
            code="cancelled",
            status=409,
            extra={"job_id": job_id, "job_url": job_url},
        )
    error = state.get("error") or {}
    code = error.get("code") or "failed"
    return ApplicationError(
        f"{error.get('message') or 'The transcription failed.'} (job {job_id})",
        code=code,
        status=_INPUT_FAILURES.get(code, 500),
        extra={"job_id": job_id, "job_url": job_url},
    )


def job_pending(job_id: str, *, job_url: str, waited: float) -> ApplicationError:
    """The wait ran out: the job goes on, and the client can fetch it later."""
    return ApplicationError(
        f"Transcription job {job_id} did not finish within {waited:.0f} s; it goes "
        f"on. Fetch its result from {job_url} (the same API token).",
        code="job_pending",
        status=504,
        extra={"job_id": job_id, "job_url": job_url},
    )


# Models -------------------------------------------------------------------------------


def configured_model_name() -> str:
    """The name of the model the workers are set up to load (ASR_ENGINE, ASR_MODEL)."""
    if settings.ASR_MODEL:
        return Path(settings.ASR_MODEL).name or settings.ASR_MODEL
    if settings.ASR_ENGINE == "whisper":
        from asr.engines.whisper import DEFAULT_MODEL_NAME

        return DEFAULT_MODEL_NAME
    return str(settings.ASR_ENGINE)


def served_models() -> list[str]:
    """What ``model`` may name: the alias clients send, and the configured model.
    Both are the one engine this deployment's ``asr`` workers run."""
    names = [ALIAS, configured_model_name()]
    return list(dict.fromkeys(names))


def model_check(name: str) -> str:
    served = served_models()
    if name not in served:
        raise ApplicationError(
            f"The model {name!r} is not served here; use one of: {', '.join(served)}."
            if name
            else f"Name a model: one of {', '.join(served)}.",
            code="model_not_found",
            extra={"param": "model"},
        )
    return name


def model_object(name: str) -> dict[str, Any]:
    # No creation date is known for a local model: 0, a valid Unix time.
    return {"id": name, "object": "model", "created": 0, "owned_by": "kikipounamu"}


def model_list() -> dict[str, Any]:
    return {"object": "list", "data": [model_object(name) for name in served_models()]}


# Transcriptions -----------------------------------------------------------------------


def transcription_answer(
    state: dict[str, Any],
    *,
    response_format: str,
    granularities: tuple[str, ...],
    temperature: float | None,
) -> tuple[str, bytes]:
    """A succeeded job's answer: (content type, body)."""
    text = state.get("text") or ""
    segments = state.get("segments") or []
    duration = float(state.get("duration") or 0.0)
    if response_format == "text":
        body = formats.to_txt(text, segments)
    elif response_format == "srt":
        body = formats.to_srt(text, segments)
    elif response_format == "vtt":
        body = formats.to_vtt(text, segments)
    elif response_format == "verbose_json":
        return JSON, json_bytes(
            _verbose(
                state,
                duration=duration,
                granularities=granularities,
                temperature=temperature,
            )
        )
    else:
        return JSON, json_bytes({"text": text, "usage": _usage(duration)})
    return _TEXT_TYPES[response_format], body.encode()


def _usage(duration: float) -> dict[str, Any]:
    return {"type": "duration", "seconds": round(duration, 3)}


def _verbose(
    state: dict[str, Any],
    *,
    duration: float,
    granularities: tuple[str, ...],
    temperature: float | None,
) -> dict[str, Any]:
    stored = [s for s in state.get("segments") or [] if str(s.get("text", "")).strip()]
    body: dict[str, Any] = {
        "task": "transcribe",
        # An ISO 639-1 code ("en"), where OpenAI's whisper-1 writes the language's
        # English name ("english").
        "language": state.get("detected_language") or state.get("language") or "",
        "duration": round(duration, 3),
        "text": state.get("text") or "",
    }
    # OpenAI's default is segments; asking for words only leaves them out.
    if not granularities or "segment" in granularities:
        body["segments"] = [
            _segment(i, s, temperature=temperature) for i, s in enumerate(stored)
        ]
    if "word" in granularities:
        body["words"] = [
            {
                "word": str(word.get("text", "")),
                "start": float(word["start"]),
                "end": float(word["end"]),
            }
            for s in stored
            for word in s.get("words") or []
        ]
    body["usage"] = _usage(duration)
    return body


def _segment(
    index: int, stored: dict[str, Any], *, temperature: float | None
) -> dict[str, Any]:
    start = float(stored["start"])
    return {
        "id": index,
        # Whisper's seek counts 10 ms frames to the window's start: the segment's
        # start, here (the decoder's windows are not kept).
        "seek": round(start * 100),
        "start": start,
        "end": float(stored["end"]),
        "text": str(stored.get("text", "")).strip(),
        # Token ids are not kept.
        "tokens": [],
        # The decoder's figures where the engine gave them (Whisper does); where it
        # gave none (FunASR), the values that pass every check a client makes with
        # them (OpenAI's type has them all as numbers): sure, plain, speech.
        "temperature": _number(stored.get("temperature"), temperature or 0.0),
        "avg_logprob": _number(stored.get("avg_logprob"), 0.0),
        "compression_ratio": _number(stored.get("compression_ratio"), 1.0),
        "no_speech_prob": _number(stored.get("no_speech_prob"), 0.0),
    }


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, int | float) else default


def json_bytes(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode()


# Streams ------------------------------------------------------------------------------


def sse(data: dict[str, Any]) -> bytes:
    """One Server-Sent Event carrying ``data`` as JSON (OpenAI sends no event names)."""
    return b"data: " + json_bytes(data) + b"\n\n"


# A comment line: keeps proxies from closing a quiet stream; clients skip it.
SSE_KEEPALIVE = b": waiting\n\n"


def delta_event(delta: str) -> bytes:
    return sse({"type": "transcript.text.delta", "delta": delta})


def done_event(state: dict[str, Any]) -> bytes:
    return sse({"type": "transcript.text.done", "text": state.get("text") or ""})


def error_event(exc: ApplicationError) -> bytes:
    """An error after the stream began: the official client raises ``APIError``."""
    error = json.loads(error_body(exc))["error"]
    return sse({"type": "error", "error": error})


class TextDeltas:
    """The text of a job's segments as append-only deltas, one a segment, as its
    states come in (progress, then the end). States carry every segment so far;
    lost ones (the channel layer may drop events) are made up by the next. If the
    segments change under what was sent (an attempt that started over and heard
    otherwise), no more deltas: the done event has the whole text anyway."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.diverged = False

    def new(self, state: dict[str, Any]) -> list[str]:
        if self.diverged:
            return []
        texts = [
            text
            for s in state.get("segments") or []
            if (text := str(s.get("text", "")).strip())
        ]
        if texts[: len(self.sent)] != self.sent:
            self.diverged = len(texts) >= len(self.sent)
            return []
        deltas = []
        for text in texts[len(self.sent) :]:
            deltas.append(f" {text}" if self.sent else text)
            self.sent.append(text)
        return deltas
