"""Long audio through real processes: HTTP in, two whisper workers, chunks in
parallel, one merged transcript out, progress over the job's WebSocket."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.conf import settings
from websockets.sync.client import connect

from asr.models import TranscriptionChunk
from asr.models import TranscriptionEvent
from asr.ops import redis_state
from tests import processes
from tests.audio_files import FORMATS
from tests.audio_files import speech
from tests.audio_files import write
from tests.speech import SENTENCES
from tests.speech import espeak_available
from tests.speech import word_error_rate

pytestmark = [
    pytest.mark.pipeline,
    pytest.mark.skipif(
        not espeak_available(), reason="espeak-ng is installed by `make test`"
    ),
]

# Its own web and queues, so that the session's worker (which does not fan out)
# cannot take these jobs.
NAMESPACE = {"KIKI_TEST_NAMESPACE": "-fanout"}
FANOUT = {
    **NAMESPACE,
    "ASR_FANOUT_SECONDS": "30",
    "ASR_FANOUT_CHUNK_SECONDS": "20",
    "ASR_FANOUT_MAX_CHUNK_SECONDS": "30",
    # Two workers on a small machine: one thread each, so they run side by side.
    "ASR_THREADS": "1",
}
SR = 16_000
PAUSE_SECONDS = 3.5
# Whisper tiny.en on espeak-ng sentences scores ~0.09 one by one (test_pipeline).
WER_BOUND = 0.2
# One word of each sentence, to find the segment that says it.
KEYWORDS = [
    "fox",
    "stella",
    "shells",
    "weather",
    "train",
    "recognition",
    "apples",
    "library",
    "window",
    "project",
    "football",
    "plants",
]


@pytest.fixture(scope="module")
def two_workers(own_web: str) -> Iterator[list[processes.Process]]:
    workers = [processes.start_worker(engine_reported=True, **FANOUT) for _ in range(2)]
    yield workers
    for worker in workers:
        worker.stop()


def long_speech(
    directory: Path, sentences: list[str]
) -> tuple[Path, list[float], float]:
    """The sentences spoken, each followed by a pause, as one FLAC file; with the
    time each sentence starts at and the total length."""
    parts, starts, position = [], [], 0
    for text in sentences:
        voice = speech(text, directory)
        starts.append(position / SR)
        parts += [voice, np.zeros(int(PAUSE_SECONDS * SR), np.float32)]
        position += len(voice) + int(PAUSE_SECONDS * SR)
    path = write(np.concatenate(parts), directory / "long.flac", FORMATS["flac"])
    return path, starts, position / SR


class Watcher:
    """A real WebSocket client on the job's socket, collecting what it is sent."""

    def __init__(self, url: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self._socket: Any = None
        self._open = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()
        assert self._open.wait(10), "the job's WebSocket did not open"

    def _read(self, url: str) -> None:
        with connect(url, open_timeout=10) as socket:
            self._socket = socket
            self._open.set()
            for raw in socket:
                message = json.loads(raw)
                self.messages.append(message)
                if message.get("event") in ("succeeded", "failed"):
                    return

    def close(self, timeout: float = 10) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._socket.close()


def test_long_audio_runs_as_parallel_chunks_and_comes_back_as_one_transcript(
    own_live_api, two_workers, tmp_path: Path
) -> None:
    # given ~90 s of speech: twelve sentences, each followed by a pause
    clip, starts, seconds = long_speech(tmp_path, SENTENCES)
    assert 75 < seconds < 100

    # when it is submitted through the API and watched over its WebSocket
    response = own_live_api.submit(clip)
    assert response.status_code == 202, response.text
    body = response.json()
    watcher = Watcher(body["links"]["websocket"])
    job = own_live_api.wait(body["id"], timeout=150)
    watcher.close()

    # then it succeeded as one job, run once, with its whole length
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1
    assert job["duration"] == pytest.approx(seconds, abs=0.05)
    assert job["engine"] == "whisper"

    # in chunks cut in the pauses, each run once, by both workers side by side
    chunks = list(
        TranscriptionChunk.objects.filter(transcription_id=job["id"]).order_by("index")
    )
    assert len(chunks) >= 4
    assert chunks[0].start == 0 and chunks[-1].end == pytest.approx(seconds)
    assert all(c.duration <= 30 for c in chunks)
    assert all((c.status, c.attempts) == ("succeeded", 1) for c in chunks)
    for chunk in chunks[1:]:
        assert not any(
            start + 0.1 < chunk.start < end - 0.1
            for start, end in _voiced(starts, seconds)
        ), f"cut at {chunk.start:.2f} s, inside a sentence"
    assert len({c.worker_pid for c in chunks}) == 2
    assert any(
        a.worker_pid != b.worker_pid
        and a.started_at < b.finished_at
        and b.started_at < a.finished_at
        for a in chunks
        for b in chunks
    ), "no two chunks ran at the same time"
    assert sorted(job["meta"]["worker_pids"]) == sorted({c.worker_pid for c in chunks})

    # the segments are in order, with times in the whole file
    segments = job["segments"]
    for previous, segment in itertools.pairwise(segments):
        assert segment["start"] >= previous["end"] - 1e-3
    assert segments[0]["start"] >= 0 and segments[-1]["end"] <= seconds + 1e-3
    for chunk in chunks:
        for segment in chunk.segments:
            assert chunk.start - 1e-3 <= segment["start"] <= chunk.end + 1e-3
    found = 0
    for keyword, start in zip(KEYWORDS, starts, strict=True):
        saying = [s for s in segments if keyword in s["text"].lower()]
        if saying:
            found += 1
            assert abs(saying[0]["start"] - start) < 2.0, (keyword, saying, start)
    assert found >= 8, segments

    # and the words are right
    wer = word_error_rate([" ".join(SENTENCES)], [job["text"]])
    print(f"WER over {seconds:.0f} s in {len(chunks)} chunks: {wer:.3f}")
    assert wer < WER_BOUND

    # the watcher saw a snapshot, one progress event per chunk, then the success,
    # each with a sequence number of its own. Two workers finishing chunks at once
    # push from two processes, so two pushes may arrive in either order: in the
    # order of their numbers (which a client goes by, dropping what is not newer
    # than what it holds) they count the chunks up, and the success is last.
    assert watcher.messages[0]["type"] == "snapshot"
    events = [m for m in watcher.messages if m["type"] == "event"]
    seqs = [e["seq"] for e in events]
    assert len(seqs) == len(set(seqs))
    events.sort(key=lambda e: e["seq"])
    progress = [e for e in events if e["event"] == "progress"]
    # One per chunk, never counting down; two chunks whose rows committed before
    # either push read the count both say the higher one (CI once saw 2, 2, 3, 4).
    done = [e["job"]["meta"]["chunks"]["done"] for e in progress]
    assert len(done) == len(chunks), done
    assert done == sorted(done) and done[-1] == len(chunks), done
    assert all(n <= i + 2 for i, n in enumerate(done)), done
    assert all(e["job"]["meta"]["chunks"]["total"] == len(chunks) for e in progress)
    assert events[-1]["event"] == "succeeded"
    assert events[-1]["seq"] == job["event_seq"]

    # its history shows one start and one finish; the chunk audio is gone
    kinds = list(
        TranscriptionEvent.objects.filter(transcription_id=job["id"]).values_list(
            "kind", flat=True
        )
    )
    assert kinds == ["accepted", "started", "succeeded"]
    assert not (Path(settings.MEDIA_ROOT) / "chunks" / job["id"]).exists()


def forget_engine_reports(namespace: str) -> None:
    """Drop the namespace's workers' engine reports, and outwait the web's cache of
    them (asr.selectors.served_languages)."""
    from django.conf import settings as test_settings

    client = redis_state.client()
    prefix = test_settings.REDIS_KEY_PREFIX.rstrip(":") + namespace + ":"
    for key in client.scan_iter(match=f"{prefix}kiki:ops:engine:*"):
        client.delete(key)
    time.sleep(5.5)


def _voiced(starts: list[float], seconds: float) -> list[tuple[float, float]]:
    """Where each sentence is spoken (it ends PAUSE_SECONDS before the next starts)."""
    ends = [*starts[1:], seconds]
    return [(s, e - PAUSE_SECONDS) for s, e in zip(starts, ends, strict=True)]


def test_a_chunk_that_fails_permanently_fails_the_job_with_its_code(
    own_live_api, two_workers, tmp_path: Path
) -> None:
    # given ~45 s of speech, asked for in German of an English-only model whose
    # workers have not said what they serve (the door would refuse it otherwise)
    clip, _, seconds = long_speech(tmp_path, SENTENCES[:6])
    assert seconds > 30
    forget_engine_reports(NAMESPACE["KIKI_TEST_NAMESPACE"])

    # when it is submitted
    response = own_live_api.submit(clip, language="de")
    assert response.status_code == 202, response.text
    job = own_live_api.wait(response.json()["id"], timeout=90)

    # then the job failed once, with the chunk's code and message
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "unsupported_language"
    assert "English only" in job["error"]["message"]
    events = TranscriptionEvent.objects.filter(transcription_id=job["id"])
    assert [e.kind for e in events] == ["accepted", "started", "failed"]
    assert events.last().data["code"] == "unsupported_language"
    chunks = TranscriptionChunk.objects.filter(transcription_id=job["id"])
    assert chunks.count() >= 2
    assert chunks.filter(status="failed").count() >= 1
    assert not chunks.filter(status="succeeded").exists()
    # the chunks after it found nothing to do, and the chunk audio is gone
    time.sleep(1)
    assert not chunks.filter(status="running").exists()
    assert not (Path(settings.MEDIA_ROOT) / "chunks" / job["id"]).exists()
