"""Live dictation sessions: opening one (the web), its partials, finals and end (the
live workers), and the reconciler's rule for sessions nobody finished.

A session is a job (source ``live``) from its first message: ``running`` while it
streams, ``succeeded`` once ``live_finish`` has stored its audio and transcript. Its
audio and the utterances the web cut are in Redis (asr.live_store) until then; each
final is a LiveUtterance row written before anyone is told of it, so a reconnecting
client, and the finish, read finals only from the database.

What a worker computes is returned, not pushed: the tasks push (asr.realtime sits
above the services).
"""

from __future__ import annotations

import io
import logging
import os
import time
import uuid
import wave
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError
from django.db import transaction
from django.utils import timezone

from asr import chunking
from asr import live_store
from asr import storage
from asr.events import transcription_event_record
from asr.models import LiveUtterance
from asr.models import Transcription
from asr.models import TranscriptionEvent
from asr.services import attempts
from kikipounamu import dispatch

logger = logging.getLogger(__name__)

RATE = 16_000
Status = Transcription.Status
Kind = TranscriptionEvent.Kind


# The web side ---------------------------------------------------------------------


def live_session_open(
    *,
    owner: Any,
    language: str | None,
    protocol: str,
    sample_rate: int,
    name: str = "",
) -> Transcription:
    """The session's job row, running from the start, and its accepted event."""
    now = timezone.now()
    with transaction.atomic():
        job = Transcription.objects.create(
            owner=owner if owner is not None and owner.is_authenticated else None,
            source=Transcription.Source.LIVE,
            status=Status.RUNNING,
            original_filename=(name or "live session")[:255],
            audio_format="live",
            language=language or "",
            engine=settings.ASR_ENGINE,
            started_at=now,
            attempts=1,
            meta={"protocol": protocol, "client_sample_rate": sample_rate},
        )
        transcription_event_record(
            transcription_id=job.pk,
            kind=Kind.ACCEPTED,
            data={"source": "live", "protocol": protocol},
            job=job,
        )
    return job


def live_session_for(*, user: Any, session_id: str) -> Transcription | None:
    """The live session ``user`` may resume or read; None if none (or not theirs)."""
    try:
        uuid.UUID(str(session_id))
    except ValueError:
        return None
    job = Transcription.objects.filter(
        pk=session_id, source=Transcription.Source.LIVE
    ).first()
    if job is None:
        return None
    if job.owner_id is not None and (
        user is None or not user.is_authenticated or user.pk != job.owner_id
    ):
        return None
    return job


def live_finals_after(*, session_id: str, after: int) -> list[dict[str, Any]]:
    """The session's stored finals with an index above ``after``, in order."""
    return [
        utterance.as_final()
        for utterance in LiveUtterance.objects.filter(
            transcription_id=session_id, index__gt=after
        ).order_by("index")
    ]


def live_enqueue(name: str, args: list[Any], *, what: str, **options: Any) -> bool:
    """Send a live task (routed to the live queues by name, CELERY_TASK_ROUTES).

    A refused one is not made again later: a partial is stale within a second, and
    a session's finish is the live reconciler's to send."""
    return dispatch.send(name, args, what=what, resend=False, **options)


# The worker side ------------------------------------------------------------------


def _engine_options(state: dict[str, str], *, partial: bool) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if state.get("hotwords"):
        options["hotwords"] = state["hotwords"]
    # No second VAD pass over audio the web's VAD already cut to speech (whisper's
    # filter also turns on word timestamps, an alignment pass per call).
    options["vad_filter"] = False
    options["fitted_window"] = settings.LIVE_FITTED_WINDOW
    if partial:
        # A partial is replaced within a second: greedy decoding, and no decoding
        # again at higher temperatures (up to 4 s of a live process, in front of
        # finals) for half a sentence that reads badly.
        options["beam_size"] = 1
        options["retry_hotter"] = False
    return options


def live_partial(
    *, session_id: str, index: int, end: int, engine: Any
) -> dict[str, Any] | None:
    """Text of utterance ``index`` so far (its start up to sample ``end``), or None
    when it is no longer wanted: its final is already on its way, or the session is
    gone."""
    state = live_store.state(session_id)
    if not state or live_store.utterance_bounds(state, index) is not None:
        return None
    start = int(state.get(f"s:{index}", -1))
    if start < 0 or end <= start:
        return None
    samples = live_store.audio_range(session_id, start, end)
    result = engine.transcribe(
        samples,
        RATE,
        state.get("language") or None,
        **_engine_options(state, partial=True),
    )
    return {
        "utterance": index,
        "text": result.text,
        "start": round(start / RATE, 3),
        "end": round(end / RATE, 3),
    }


def _utterance_text(
    state: dict[str, str], session_id: str, start: int, end: int, engine: Any
) -> dict[str, Any]:
    """Samples [start, end) transcribed as a final is: text, language, segments
    (in session seconds), engine seconds."""
    samples = live_store.audio_range(session_id, start, end)
    started = time.monotonic()
    result = engine.transcribe(
        samples,
        RATE,
        state.get("language") or None,
        **_engine_options(state, partial=False),
    )
    # In session seconds, kept inside the utterance, as a chunk's are in its file.
    segments = chunking.absolute_segments(
        [seg for seg in result.segments_as_dicts() if seg.get("text")],
        offset=start / RATE,
        duration=(end - start) / RATE,
    )
    return {
        "text": result.text,
        "language": result.language or "",
        "segments": segments,
        "engine_seconds": round(time.monotonic() - started, 4),
    }


def live_prepare(
    *, session_id: str, index: int, start: int, end: int, engine: Any
) -> bool:
    """Utterance ``index`` transcribed as if it ended at ``end`` (a pause began
    there), kept in Redis for its final. Skipped when the final is already made or
    the utterance ended elsewhere. True if it ran."""
    state = live_store.state(session_id)
    if not state:
        return False
    bounds = live_store.utterance_bounds(state, index)
    if bounds is not None and bounds != (start, end):
        return False
    if LiveUtterance.objects.filter(transcription_id=session_id, index=index).exists():
        return False
    # Said first: a final that starts meanwhile on another process waits for this
    # text rather than making it a second time.
    live_store.prepared_set(
        session_id, index, {"start": start, "end": end, "pending": True}, ttl=15
    )
    text = _utterance_text(state, session_id, start, end, engine)
    live_store.prepared_set(session_id, index, {"start": start, "end": end, **text})
    return True


def _prepared_text(
    session_id: str, index: int, start: int, end: int, *, wait: float = 3.0
) -> dict[str, Any] | None:
    """The prepared text of utterance ``index`` if it covers [start, end); one
    still being made is waited for (up to ``wait`` seconds)."""
    deadline = time.monotonic() + wait
    while True:
        prepared = live_store.prepared_get(session_id, index)
        if prepared is None or (prepared["start"], prepared["end"]) != (start, end):
            return None
        if not prepared.get("pending"):
            return prepared
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def _utterance_bounds(session_id: str, index: int) -> tuple[int, int] | None:
    state = live_store.state(session_id)
    bounds = live_store.utterance_bounds(state, index) if state else None
    if bounds is None and state.get("state") != "streaming":
        bounds = live_store.utterance_open_bounds(state, index)
    return bounds


def live_final(
    *, session_id: str, index: int, engine: Any, hostname: str
) -> tuple[dict[str, Any] | None, bool]:
    """Utterance ``index``'s final, stored: (final, made now). A second run (a
    redelivered message, the finish catching up) stores nothing new and returns the
    stored one, so a client told twice sees the same index and drops the copy.

    Raises what the engine raises (``attempts.PERMANENT_ERRORS``, transient ones):
    the task decides, and stores the failure with ``live_final_failed``.
    """
    stored = LiveUtterance.objects.filter(
        transcription_id=session_id, index=index
    ).first()
    if stored is not None:
        return stored.as_final(), False
    bounds = _utterance_bounds(session_id, index)
    if bounds is None:
        logger.warning(
            "live session %s: utterance %d has no audio in Redis (expired?)",
            session_id,
            index,
        )
        return None, False
    start, end = bounds
    if end <= start:
        # No audio: an utterance the client cleared.
        text: dict[str, Any] = {
            "text": "",
            "segments": [],
            "language": "",
            "engine_seconds": 0.0,
        }
    else:
        text = _prepared_text(session_id, index, start, end) or _utterance_text(
            live_store.state(session_id), session_id, start, end, engine
        )
    return _final_store(
        session_id,
        index,
        start=start,
        end=end,
        worker_hostname=hostname,
        text=text["text"],
        segments=text["segments"],
        language=text["language"],
        engine_seconds=text["engine_seconds"],
    )


def live_final_failed(
    *, session_id: str, index: int, failure: attempts.Failure, hostname: str
) -> tuple[dict[str, Any] | None, bool]:
    """Utterance ``index`` could not be transcribed: its final is stored with the
    error and no text (the session goes on; its client is told)."""
    bounds = _utterance_bounds(session_id, index) or (0, 0)
    logger.warning(
        "live session %s: utterance %d failed %s: %s",
        session_id,
        index,
        failure.code,
        failure.message,
    )
    return _final_store(
        session_id,
        index,
        start=bounds[0],
        end=bounds[1],
        worker_hostname=hostname,
        error_code=failure.code,
        error_message=failure.message,
    )


def _final_store(
    session_id: str, index: int, *, start: int, end: int, **fields: Any
) -> tuple[dict[str, Any] | None, bool]:
    try:
        with transaction.atomic():
            utterance = LiveUtterance.objects.create(
                transcription_id=session_id,
                index=index,
                start=round(start / RATE, 3),
                end=round(end / RATE, 3),
                **fields,
            )
    except IntegrityError:
        # Another run stored it first (or the session's row is gone).
        stored = LiveUtterance.objects.filter(
            transcription_id=session_id, index=index
        ).first()
        return (stored.as_final() if stored else None), False
    return utterance.as_final(), True


def live_finish(
    *, session_id: str, engine: Any, hostname: str
) -> tuple[Transcription | None, list[dict[str, Any]]]:
    """End the session: every final stored (those still missing made here), the
    audio in the store as a WAV, the job succeeded with its transcript. Idempotent:
    a finished session is returned as it is.

    Returns the job (None if it is gone, or still streaming after a reconnect) and
    the finals this call made, for the task to push.
    """
    job = Transcription.objects.filter(pk=session_id).first()
    if job is None:
        return None, []
    if job.status != Status.RUNNING:
        return job, []
    state = live_store.state(session_id)
    if state.get("state") == "streaming":
        # Resumed since this finish was asked for: the new connection ends it.
        return None, []
    count = int(state.get("next", 0)) if state else 0
    made = []
    for index in range(count):
        final, new = live_final(
            session_id=session_id, index=index, engine=engine, hostname=hostname
        )
        if new and final is not None:
            made.append(final)
    pcm = live_store.audio_all(session_id) or b""
    name = ""
    if pcm:
        name = storage.audio_save(
            f"audio/{job.created_at:%Y/%m/%d}/{uuid.uuid4().hex}.wav", wav_bytes(pcm)
        )
    utterances = list(LiveUtterance.objects.filter(transcription_id=session_id))
    segments = [segment for u in utterances for segment in u.segments]
    duration = len(pcm) / live_store.BYTES_PER_SAMPLE / RATE
    languages = [u.language for u in utterances if u.language]
    now = timezone.now()
    engine_seconds = sum(u.engine_seconds or 0 for u in utterances)
    # Every utterance failed (an engine that refuses this language, say): the
    # session failed, with their reason; some did: it succeeded with the rest.
    failures = [u for u in utterances if u.error_code]
    failed = bool(utterances) and len(failures) == len(utterances)
    with transaction.atomic():
        updated = Transcription.objects.filter(pk=job.pk, status=Status.RUNNING).update(
            status=Status.FAILED if failed else Status.SUCCEEDED,
            error_code=failures[0].error_code if failed else "",
            error_message=failures[0].error_message if failed else "",
            text=" ".join(u.text for u in utterances if u.text).strip(),
            segments=segments,
            audio=name,
            audio_codec="pcm_s16le" if name else "",
            audio_size=len(pcm) + 44 if name else 0,
            duration=round(duration, 3),
            detected_language=max(set(languages), key=languages.count)
            if languages
            else "",
            model=engine.model_name,
            device=engine.device,
            worker_hostname=hostname,
            finished_at=now,
            engine_seconds=round(engine_seconds, 4),
            processing_seconds=round(
                (now - (job.started_at or job.created_at)).total_seconds(), 3
            ),
            real_time_factor=round(engine_seconds / duration, 4) if duration else None,
            meta={
                **job.meta,
                "utterances": len(utterances),
                "worker_pid": os.getpid(),
            },
        )
        if not updated:
            if name:
                storage.audio_delete([name])
            job.refresh_from_db()
            return job, made
        job.refresh_from_db()
        transcription_event_record(
            transcription_id=job.pk,
            kind=Kind.FAILED if failed else Kind.SUCCEEDED,
            data={"utterances": len(utterances), "duration": job.duration},
            job=job,
        )
    live_store.session_delete(session_id)
    return job, made


def wav_bytes(pcm: bytes) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(live_store.BYTES_PER_SAMPLE)
        wav.setframerate(RATE)
        wav.writeframes(pcm)
    return out.getvalue()


def live_reconcile(*, resume_seconds: float | None = None) -> dict[str, int]:
    """Ask for the finish of live sessions no connection will finish.

    Left alone: a session some connection said it streams within the last 30 s (the
    live:active scores, renewed every 5 s), and one dropped less than
    LIVE_RESUME_SECONDS ago (its client may come back; its own delayed finish is
    on its way). Finished: a dropped or stopped one past that, one whose streaming
    web process died (its score aged), one whose Redis state is gone.
    """
    window = resume_seconds or settings.LIVE_RESUME_SECONDS
    now = time.time()
    scores = dict(live_store.active_scores())
    # Younger sessions cannot be stale yet.
    cutoff = timezone.now() - timedelta(seconds=30)
    count = 0
    running = Transcription.objects.filter(
        source=Transcription.Source.LIVE, status=Status.RUNNING, created_at__lt=cutoff
    ).values_list("pk", flat=True)
    for pk in running:
        session_id = str(pk)
        last = scores.get(session_id)
        if last is not None and now - last < 30:
            continue
        state = live_store.state(session_id)
        dropped_at = float(state.get("detached_at", 0))
        if state.get("state") == "detached" and now - dropped_at < window:
            continue
        if live_store.finish_requested(session_id, ttl=window):
            count += live_enqueue(
                "asr.live_finish", [session_id], what=f"live session {session_id}"
            )
    return {"live_finished": count}
